"""The LLM's notes (chapters, mind map, translation): how answers are checked and asked
again (``worker/stages/notes.py``), how the notes are rendered (``tingji/notes.py``,
``tingji/formats.py``), and one task's run through its note stages in process against
the OpenAI-compatible stub, downloaded through the in-process API."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from litestar.testing import TestClient

from db.models import EventType, Stage
from server.app import create_app
from tests.helpers.http import check_srt, check_vtt
from tests.helpers.servers import LlmStub
from tests.unit.test_pipeline import _claimed, world  # noqa: F401  (a fixture)
from tingji import notes
from tingji.languages import check_language
from tingji.settings import Settings
from worker.context import RunContext
from worker.pipeline import TaskRun
from worker.stages.llm import Llm, LlmConfig
from worker.stages.notes import BadAnswer, NoteWriter, parse_chapters, parse_lines, parse_outline

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@dataclass
class S:
    start_ms: int
    end_ms: int
    text: str


def test_chapters_must_start_on_the_first_sentence_and_go_forward() -> None:
    fenced = '```json\n[{"start": 1, "title": "开场", "summary": "问好"},' \
             ' {"start": "4", "title": " 正题\\n ", "summary": ""}]\n```'
    assert parse_chapters(fenced, 1, 9) == [
        {"sentence": 1, "title": "开场", "summary": "问好"},
        {"sentence": 4, "title": "正题", "summary": ""}]
    for bad, why in [('[{"start": 2, "title": "a"}]', "first chapter"),
                     ('[{"start": 1, "title": "a"}, {"start": 1, "title": "b"}]', "increase"),
                     ('[{"start": 1, "title": "a"}, {"start": 12, "title": "b"}]', "between"),
                     ('[{"start": 1, "title": ""}]', "no title"),
                     ('[{"title": "a"}]', "sentence number"),
                     ("这里是章节：开场、正题", "no JSON array"),
                     ("[]", "empty"), ("[1, 2", "no JSON array")]:
        with pytest.raises(BadAnswer, match=why):
            parse_chapters(bad, 1, 9)


def test_an_outline_becomes_one_tree() -> None:
    tree = parse_outline("- 主题\n  - 甲\n    - 甲一\n  - 乙\n", "标题")
    assert tree == {"title": "主题", "children": [
        {"title": "甲", "children": [{"title": "甲一", "children": []}]},
        {"title": "乙", "children": []}]}
    # several top-level items go under the task's title; a skipped level is not invented
    tree = parse_outline("* 甲\n      * 甲一\n* 乙", "标题")
    assert tree["title"] == "标题" and [c["title"] for c in tree["children"]] == ["甲", "乙"]
    assert tree["children"][0]["children"][0]["title"] == "甲一"
    with pytest.raises(BadAnswer, match="not a list item"):
        parse_outline("下面是导图：\n- 甲\n- 乙", "标题")
    with pytest.raises(BadAnswer, match="at least two"):
        parse_outline("- 甲", "标题")


def test_translated_lines_must_number_as_the_sentences() -> None:
    assert parse_lines("1. Hello.\n2) World\n", 2) == ["Hello.", "World"]
    assert parse_lines("Just one.", 1) == ["Just one."]
    for bad in ("1. a\n3. c", "1. a", "1. a\n1. b", "1. a\n2. "):
        with pytest.raises(BadAnswer):
            parse_lines(bad, 2)


def test_language_codes() -> None:
    assert check_language(" zh-Hant ") == "zh-hant" and check_language("en") == "en"
    for bad in ("english!", "e", "bilingual", "en_US", "x" * 30):
        with pytest.raises(ValueError):
            check_language(bad)


def test_renderings() -> None:
    chapters = [{"start_ms": 1_500, "title": "开场", "summary": "", "sentence": 1},
                {"start_ms": 3_725_000, "title": "问答", "summary": "", "sentence": 9}]
    assert notes.chapter_list(chapters) == "00:00 开场\n1:02:05 问答\n"
    text = notes.mermaid({"title": '讲 "座"', "children": [
        {"title": "A[b]", "children": [{"title": "c`", "children": []}]}]})
    assert text.splitlines() == ["mindmap", '  n1(("讲  座"))', '    n2["A[b]"]',
                                 '      n3["c"]']
    segs = [S(0, 900, "你好。"), S(900, 1800, "再见。")]
    cues = notes.sentence_cues(segs, {"sentences": ["Hi.", "Bye."]}, bilingual=True)
    assert cues == [(0, 900, "你好。\nHi."), (900, 1800, "再见。\nBye.")]


@pytest.fixture
def stub() -> Iterator[LlmStub]:
    llm = LlmStub()
    yield llm
    llm.close()


async def test_bad_answers_are_asked_again_and_windows_halved(stub: LlmStub) -> None:
    stub.b.bad_notes = 1  # each kind's first answer is bad
    llm = Llm(LlmConfig(base_url=stub.base_url, api_key=None, model="stub"), 2)
    writer = NoteWriter(llm, llm.options({}))
    sentences = [S(i * 1000, i * 1000 + 900, f"第{i + 1}句。") for i in range(7)]
    chapters, tree, lines = await asyncio.gather(
        writer.chapters(sentences), writer.mindmap("正文。" * 10, "讲座"),
        writer.translate(sentences, "en"))
    await llm.close()
    assert [c["sentence"] for c in chapters] == [1, 4, 7]
    assert [c["start_ms"] for c in chapters] == [0, 3000, 6000]
    assert tree["title"] == "中心主题" and len(tree["children"]) == 2
    assert lines == [f"EN:第{i + 1}句。" for i in range(7)]
    kinds = [c["kind"] for c in stub.b.calls]
    assert kinds.count("chapters") == 2 and kinds.count("mindmap") == 2
    assert "上一次的回答不合要求" in [c for c in stub.b.calls if c["kind"] == "chapters"][1][
        "system"]
    # the 7-line window lost a line: asked again as 3 + 4 lines
    assert sorted(c["user"].count("\n") + 1 for c in stub.b.calls
                  if c["kind"] == "translate") == [3, 4, 7]


async def test_a_task_with_notes_runs_each_as_a_stage(world: dict[str, Any],  # noqa: F811
                                                     stub: LlmStub) -> None:
    stub.b.bad_notes = 1
    ctx: RunContext = world["ctx"]
    llm = Llm(LlmConfig(base_url=stub.base_url, api_key=None, model="stub"), 2)
    world["ctx"] = RunContext(ctx.worker_id, ctx.settings, ctx.queue, ctx.reads, ctx.asr,
                              ctx.scheduler, llm, ctx.io_sem)
    run = await _claimed(world, polish=False, chapters=True, mindmap=True, translate="en")
    result = await run.run()
    segments = await world["reads"].segments(run.id)
    n = len(segments)
    assert n >= 3
    assert [c["sentence"] for c in result["chapters"]] == list(range(1, n + 1, 3))
    assert all(c["start_ms"] == segments[c["sentence"] - 1].start_ms
               for c in result["chapters"])
    assert result["mindmap"]["title"] == "中心主题"
    assert result["translation"]["lang"] == "en"
    assert result["translation"]["sentences"] == [f"EN:{s.text}" for s in segments]
    assert set(result["llm"]) == {"chapters", "mindmap", "translate"}
    cps = await world["reads"].checkpoints(run.id)
    assert {Stage.CHAPTERS, Stage.MINDMAP, Stage.TRANSLATE} <= set(cps)
    # a second run (the worker died after the notes): nothing is asked again
    calls = len(stub.b.calls)
    again = await TaskRun(run.task, world["ctx"]).run()
    assert len(stub.b.calls) == calls and again["chapters"] == result["chapters"]
    await llm.close()
    await world["queue"].complete(run.id, "w1", result)
    events = [e for e in await world["reads"].events(run.id)
              if e.event == EventType.STAGE_COMPLETED]
    assert {"chapters", "mindmap", "translate"} <= {(e.detail or {}).get("stage")
                                                      for e in events}
    assert {"result.chapters.txt", "result.mmd", "result.en.srt",
            "result.bilingual.vtt"} <= set(result["files"])

    settings = Settings.from_env({"TINGJI_DATA_DIR": str(world["data"])})
    with TestClient(app=create_app(settings), base_url="http://127.0.0.1:8000") as client:
        def get(**params: str) -> Any:
            return client.get(f"/api/v1/download/{run.id}", params=params)
        lines = get(format="chapters").text.splitlines()
        assert lines[0] == "00:00 第1章"
        assert lines[1] == f"{notes.clock(segments[3].start_ms)} 第2章"
        md = get(format="md").text
        assert f"## [{notes.clock(segments[3].start_ms)}] 第2章" in md
        assert "```mermaid\nmindmap\n" in md
        assert get(format="mindmap").text.startswith("mindmap\n  n1((\"中心主题\"))")
        en = check_srt(get(format="srt", lang="en").text)
        assert len(en) == n and en[0][2] == f"EN:{segments[0].text}"
        both = check_vtt(get(format="vtt", lang="bilingual").text)
        assert both[1][2] == f"{segments[1].text}\nEN:{segments[1].text}"
        assert both[1][0] == segments[1].start_ms
        assert get(format="srt", lang="fr").status_code == 409
        assert get(format="txt", lang="en").status_code == 400
        segs = client.get(f"/api/v1/task/{run.id}/segments").json()
        assert segs[2]["translation"] == f"EN:{segments[2].text}"
        names = zipfile.ZipFile(io.BytesIO(get().content)).namelist()
        assert {"讲座.chapters.txt", "讲座.mmd", "讲座.en.srt", "讲座.bilingual.srt"} <= set(
            names)
        doc = json.loads(get(format="json").text)
        assert doc["chapters"] == result["chapters"] and doc["translation"]["lang"] == "en"

        # PDF notes: the text can be read back, and the first page renders (the image is
        # kept in test-artifacts/ to be looked at)
        pdf = get(format="pdf")
        assert pdf.status_code == 200 and pdf.content[:5] == b"%PDF-"
        assert "讲座.pdf" in unquote(pdf.headers["content-disposition"])
        text = pdf_text(pdf.content, world["data"])
        assert "第2章" in text and "中心主题" in text and "要点一" in text
        assert f"[{notes.clock(segments[3].start_ms)}]" in text
        assert segments[3].text.strip("。") in text.replace("\n", "")
        assert "讲座.pdf" in names_in_zip(get().content)
        render_first_page(pdf.content, world["data"])

        # the audio kept for the page (Ogg Opus), whole and in byte ranges
        audio = f"/api/v1/task/{run.id}/audio"
        whole = client.get(audio)
        assert whole.status_code == 200 and whole.headers["content-type"] == "audio/ogg"
        assert whole.content[:4] == b"OggS" and b"OpusHead" in whole.content[:100]
        assert len(whole.content) == result["audio"]["bytes"]
        size = len(whole.content)
        part = client.get(audio, headers={"Range": "bytes=10-109"})
        assert part.status_code == 206 and part.content == whole.content[10:110]
        assert part.headers["content-range"] == f"bytes 10-109/{size}"
        tail = client.get(audio, headers={"Range": "bytes=-50"})
        assert tail.status_code == 206 and tail.content == whole.content[-50:]
        past = client.get(audio, headers={"Range": f"bytes={size}-"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"


def names_in_zip(content: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(content)).namelist()


def pdf_text(content: bytes, work: Path) -> str:
    path = work / "notes.pdf"
    path.write_bytes(content)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True,
                          capture_output=True, text=True).stdout


def render_first_page(content: bytes, work: Path) -> None:
    """The first page as PNG (test-artifacts/notes-page1.png): it must not be blank."""
    path = work / "notes.pdf"
    path.write_bytes(content)
    subprocess.run(["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", "-singlefile",
                    str(path), str(work / "page1")], check=True)
    from PIL import Image

    image = Image.open(work / "page1.png").convert("L")
    dark = sum(1 for v in image.tobytes() if v < 128)
    assert dark > 500, "the first page is blank"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(work / "page1.png", ARTIFACTS / "notes-page1.png")


def test_notes_need_an_llm_and_a_language(tmp_path: Any) -> None:
    from db import migrate

    migrate.upgrade(f"sqlite:///{tmp_path / 'tingji.db'}")
    url = "http://127.0.0.1:9/talk.mp4"
    with TestClient(app=create_app(Settings.from_env({"TINGJI_DATA_DIR": str(tmp_path)})),
                    base_url="http://127.0.0.1:8000") as client:
        resp = client.post("/api/v1/process/bilibili", json={"video_url": url,
                                                             "chapters": True})
        assert resp.status_code == 400 and "TINGJI_LLM_BASE_URL" in resp.text
        resp = client.post("/v1/audio/translations", data={"model": "whisper-1"},
                           files={"file": ("a.wav", b"RIFF")})
        assert resp.status_code == 400 and "TINGJI_LLM_BASE_URL" in resp.text
    with TestClient(app=create_app(Settings.from_env({
            "TINGJI_DATA_DIR": str(tmp_path), "TINGJI_LLM_BASE_URL": "http://127.0.0.1:9/v1",
            "TINGJI_LLM_MODEL": "m"})), base_url="http://127.0.0.1:8000") as client:
        resp = client.post("/api/v1/process/bilibili",
                           json={"video_url": url, "translate": "english!"})
        assert resp.status_code == 400 and "translate" in resp.text
        resp = client.post("/api/v1/process/bilibili", json={
            "video_url": url, "chapters": True, "mindmap": True, "translate": "JA"})
        assert resp.status_code == 202
        task = client.get(f"/api/v1/task/{resp.json()['task_id']}").json()
        assert task["status"] == "pending"
        form = client.post("/api/v1/process/audio", data={"chapters": "maybe"},
                           files={"file": ("a.wav", b"RIFF")})
        assert form.status_code == 400 and "chapters" in form.text


def test_platform_subtitles_are_read_as_cues(tmp_path: Any) -> None:
    from tests.conftest import SUBTITLES
    from worker.stages.subtitles import chinese, read_cues

    assert read_cues(SUBTITLES) == [(500, 3200, "大家好，欢迎来到听记的讲座。"),
                                    (3400, 7000, "今天我们讲语音识别。"),
                                    (7500, 9900, "谢谢大家！")]
    srt = ("1\r\n00:01:02,5 --> 00:01:04,000\r\n第一行\r\n第二行 &amp; <i>斜体</i>\r\n\r\n"
           "2\n00:01:03,000 --> 00:01:05,000\n重叠的\n\n3\n00:01:06,000 --> 00:01:06,000\n"
           "零长\n\n4\n1:00:00,000 --> 1:00:01,000\n\n")
    assert read_cues(srt) == [(62_500, 63_000, "第一行 第二行 & 斜体"),
                              (63_000, 65_000, "重叠的")]
    vtt, en = tmp_path / "a.zh-Hant.vtt", tmp_path / "a.en.vtt"
    vtt.write_text(SUBTITLES)
    en.write_text(SUBTITLES)
    got = {"en": {"ext": "vtt", "filepath": str(en)},
           "zh-Hant": {"ext": "vtt", "filepath": str(vtt)},
           "zh-CN": {"ext": "vtt", "filepath": str(tmp_path / "missing.vtt")}}
    assert chinese(got) == ("zh-Hant", vtt) and chinese({"en": got["en"]}) is None

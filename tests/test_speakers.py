"""Speaker labels end to end: a two-voice clip with speakers=2 comes back labelled in
segments, SRT, VTT, Markdown, text and JSON; naming the speakers changes every
download; the speaker model loads only when a task asks.  Real processes, the tiny
random-weight CAM++ through funasr's own diarization."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import media as m
from tests.helpers.http import check_srt, check_vtt
from tests.helpers.stack import Stack


@pytest.fixture(scope="module")
def dialogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two espeak-ng voices (a man and a woman) taking turns."""
    return m.speech_wav(tmp_path_factory.mktemp("dialogue") / "dialogue.wav",
                        m.SENTENCES[:6], pause_s=0.9, voices=("cmn", "cmn+f4"))


def model_loads(stack: Stack) -> int:
    [w] = stack.http.get("/api/v1/queue").json()["workers"]
    return int(w["model_loads"])


def test_two_speakers_labelled_everywhere_and_named(
        stack_factory: Callable[..., Stack], dialogue: Path, media: dict[str, Path]) -> None:
    stack = stack_factory()
    stack.worker()
    plain = stack.finished(stack.upload(media["speech"]))
    assert plain["status"] == "completed" and plain["result"]["speakers"] is None
    assert model_loads(stack) == 1  # a task without speakers never loads CAM++

    tid = stack.upload(dialogue, speakers="2")
    task = stack.finished(tid)
    assert task["status"] == "completed", task
    assert task["result"]["speakers"] == 2 and model_loads(stack) == 2

    def download(fmt: str) -> str:
        resp = stack.http.get(f"/api/v1/download/{tid}", params={"format": fmt})
        assert resp.status_code == 200
        return resp.text

    def labels_everywhere(a: str, b: str) -> None:
        segs = stack.http.get(f"/api/v1/task/{tid}/segments").json()
        assert {s["speaker"] for s in segs} == {a, b}
        srt = check_srt(download("srt"))
        assert all(re.match(rf"\[({a}|{b})\] ", text) for _, _, text in srt)
        assert {text.split("]")[0][1:] for _, _, text in srt} == {a, b}
        assert [t for _, _, t in check_vtt(download("vtt"))] == [t for _, _, t in srt]
        md = download("md")
        assert f"**{a}**：" in md and f"**{b}**：" in md
        txt_lines = [line for line in download("txt").splitlines() if line.strip()]
        assert all(line.startswith((f"[{a}] ", f"[{b}] ")) for line in txt_lines)
        doc = json.loads(download("json"))
        assert {s["speaker"] for s in doc["segments"]} == {a, b}

    labels_everywhere("S1", "S2")
    resp = stack.http.patch(f"/api/v1/task/{tid}/speakers", json={"S1": "张老师", "S2": "学生"})
    assert resp.status_code == 200, resp.text
    labels_everywhere("张老师", "学生")
    assert "speakers_named" in [e["event"] for e in stack.events(tid)]
    # the exported files on this machine say the names too, the same as a download
    exported = stack.data / "results" / tid
    for fmt in ("txt", "srt", "vtt"):
        assert (exported / f"result.{fmt}").read_text(encoding="utf-8") == download(fmt)

    # hostile or impossible names and counts
    for body in ({"S3": "x"}, {"S1": ""}, {"S1": "[S2]"}, {"S1": "x" * 41}, {"S1": "a\x00"}):
        bad = stack.http.patch(f"/api/v1/task/{tid}/speakers", json=body)
        assert bad.status_code == 400, (body, bad.text)
    no_labels = stack.http.patch(f"/api/v1/task/{plain['task_id']}/speakers", json={"S1": "x"})
    assert no_labels.status_code == 400
    for value in (1, 17, "two", True):
        bad = stack.http.post("/api/v1/process/bilibili", json={
            "video_url": "https://example.com/x.mp4", "speakers": value})
        assert bad.status_code == 400 and "speakers" in bad.text, (value, bad.text)


def test_polish_keeps_the_speaker_turns(stack_factory: Callable[..., Stack],
                                        dialogue: Path) -> None:
    from tests.helpers.servers import LlmStub

    llm = LlmStub()
    try:
        stack = stack_factory(TINGJI_LLM_BASE_URL=llm.base_url, TINGJI_LLM_MODEL="stub-chat")
        stack.worker()
        task = stack.finished(stack.upload(dialogue, speakers="2"))
        assert task["status"] == "completed", task
        polish = [c for c in llm.b.calls if c["kind"] == "polish"]
        assert polish and all("说话人标记" in c["system"] for c in polish)
        assert any(re.search(r"^\[S[12]\] ", c["user"], re.M) for c in polish)
        assert re.search(r"^(【润色】)?\[S[12]\] ", task["result"]["polished_text"], re.M)
    finally:
        llm.close()

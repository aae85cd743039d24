"""The worker as a real process: real funasr (tiny random-weight model), real ffmpeg,
real yt-dlp against a local file server, the real openai client against a local stub,
the real API server.  Crashes and stops are in ``test_crashes.py``."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.http import check_srt, check_vtt
from tests.helpers.servers import FileServer, LlmStub
from tests.helpers.stack import Stack

pytestmark = pytest.mark.slow


def assert_segments_and_srt(stack: Stack, tid: str) -> list[dict[str, Any]]:
    segs = stack.http.get(f"/api/v1/task/{tid}/segments").json()
    assert segs and all(s["text"] and s["end_ms"] >= s["start_ms"] for s in segs)
    srt = stack.http.get(f"/api/v1/download/{tid}", params={"format": "srt"})
    assert srt.status_code == 200
    cues = check_srt(srt.text)
    assert len(cues) >= len(segs)
    vtt = stack.http.get(f"/api/v1/download/{tid}", params={"format": "vtt"})
    assert vtt.status_code == 200 and check_vtt(vtt.text) == cues
    # character timestamps (funasr's per-token times: with paraformer-zh one per Chinese
    # character; the random-weight model also emits tokens it prints as nothing), inside
    # their sentence, in order
    for s in segs:
        chars = s["chars"]
        assert chars
        assert all(a <= b for a, b in chars)
        assert all(p[1] <= q[0] + 1 for p, q in zip(chars, chars[1:], strict=False))
        assert s["start_ms"] <= chars[0][0] and chars[-1][1] <= s["end_ms"] + 1
    doc = stack.http.get(f"/api/v1/download/{tid}", params={"format": "json"}).json()
    assert [d["chars"] for d in doc["segments"]] == [s["chars"] for s in segs]
    return segs  # type: ignore[no-any-return]


# ---------------------------------------------------------------- end to end
def test_upload_to_completed_with_text_segments_and_srt(
        stack_factory: Callable[..., Stack], media: dict[str, Path]) -> None:
    stack = stack_factory()
    stack.worker()
    tid = stack.upload(media["video"])
    task = stack.finished(tid)
    assert task["status"] == "completed", task
    result = task["result"]
    assert result["text"] and result["segments"] > 3
    assert 40 < result["duration_s"] < 43 and result["asr_rtf"] > 0
    assert set(result["stage_seconds"]) == {"fetch", "transcribe", "export"}
    assert result["polished_text"] is None  # no LLM configured: raw transcript
    segs = assert_segments_and_srt(stack, tid)
    assert segs[-1]["end_ms"] <= result["duration_s"] * 1000 + 50
    out = stack.data / "results" / tid
    assert sorted(p.name for p in out.iterdir()) == [
        "audio.opus", "result.json", "result.md", "result.srt", "result.txt", "result.vtt"]
    assert result["audio"]["bytes"] == (out / "audio.opus").stat().st_size  # 32 kbit/s
    assert result["audio"]["bytes"] < 42 * 32_000 / 8 * 1.3
    stack.work_files_removed(tid, upload=True)  # normalized audio and the upload removed
    events = [(e["event"], (e["detail"] or {}).get("stage")) for e in stack.events(tid)]
    assert events == [("enqueued", None), ("claimed", None), ("stage_started", "fetch"),
                      ("stage_completed", "fetch"), ("stage_started", "transcribe"),
                      ("stage_completed", "transcribe"), ("stage_started", "export"),
                      ("stage_completed", "export"), ("completed", None)]


def test_url_task_through_local_media_server(stack_factory: Callable[..., Stack],
                                             files: FileServer) -> None:
    stack = stack_factory()
    stack.worker()
    tid = stack.submit_url(f"{files.url}/talk.mp4")
    task = stack.finished(tid)
    assert task["status"] == "completed", task
    assert task["title"] == "talk" and task["result"]["segments"] > 3
    assert_segments_and_srt(stack, tid)


def test_a_site_that_refuses_for_a_while_is_tried_again(stack_factory: Callable[..., Stack],
                                                        files: FileServer) -> None:
    """A site answering 412, then 429, then the media: the task waits as pending with the
    code and its next try, uses none of its attempts (it has one), and completes.  A
    404 fails at once with ``not_found``."""
    stack = stack_factory(TINGJI_RETRY_BACKOFF_SECONDS="2", TINGJI_MAX_ATTEMPTS="1")
    files.refusals[:] = [412, 429]
    stack.worker()
    tid = stack.submit_url(f"{files.url}/talk.mp4")
    waiting = stack.wait(lambda: (t := stack.task(tid))["status"] == "pending"
                         and t["error"] and t, 60, "a deferred try")
    assert waiting["error"]["code"] == "rate_limited" and waiting["next_attempt_at"]
    task = stack.finished(tid)
    assert task["status"] == "completed" and task["attempts"] == 1, task
    retries = [e["detail"] for e in stack.events(tid) if e["event"] == "retry_scheduled"]
    assert len(retries) == 2 and all(not d["counted"] for d in retries)
    assert [d["error"]["code"] for d in retries] == ["rate_limited", "rate_limited"]
    assert not files.refusals

    gone = stack.finished(stack.submit_url(f"{files.url}/missing.mp4"))
    assert gone["status"] == "failed" and gone["attempts"] == 1, gone
    assert gone["error"]["code"] == "not_found" and gone["next_attempt_at"] is None


def test_the_same_lecture_twice_is_transcribed_once(stack_factory: Callable[..., Stack],
                                                   media: dict[str, Path],
                                                   files: FileServer) -> None:
    """A re-upload and a link to the same file take the first task's sentences
    (``transcript_reused``) and give its result; ``reuse=false`` transcribes again."""
    stack = stack_factory()
    stack.worker()

    def sentences(tid: str) -> list[dict[str, Any]]:
        return stack.http.get(f"/api/v1/task/{tid}/segments").json()  # type: ignore[no-any-return]

    first = stack.upload(media["video"])
    assert stack.finished(first)["status"] == "completed"
    again = stack.upload(media["video"])
    by_url = stack.submit_url(f"{files.url}/talk.mp4")
    for tid, sources in ((again, {first}), (by_url, {first, again})):
        assert stack.finished(tid)["status"] == "completed"
        reused = [e["detail"] for e in stack.events(tid) if e["event"] == "transcript_reused"]
        assert len(reused) == 1 and reused[0]["from_task"] in sources, reused
        assert sentences(tid) == sentences(first) != []
    fresh = stack.upload(media["video"], reuse="false")
    assert stack.finished(fresh)["status"] == "completed"
    assert not [e for e in stack.events(fresh) if e["event"] == "transcript_reused"]
    assert sentences(fresh) == sentences(first)


def test_multi_part_page_becomes_chapters(stack_factory: Callable[..., Stack],
                                          files: FileServer) -> None:
    stack = stack_factory()
    stack.worker()
    tid = stack.submit_url(f"{files.url}/parts.html")
    task = stack.finished(tid)
    assert task["status"] == "completed", task
    chapters = task["result"]["chapters"]
    assert [c["index"] for c in chapters] == [1, 2]
    assert chapters[1]["start_s"] == pytest.approx(chapters[0]["duration_s"], abs=0.05)
    assert task["result"]["duration_s"] == pytest.approx(2 * chapters[0]["duration_s"], abs=0.1)


def test_a_video_with_chinese_subtitles_is_not_transcribed_and_gets_them_burned(
        stack_factory: Callable[..., Stack], files: FileServer, media: dict[str, Path]
        ) -> None:
    """subtitles_first: the page's own subtitle track (a <track> yt-dlp's generic
    extractor reads) becomes the sentences, with its cue times; no ASR runs.
    burn_subtitles: the video comes back with them drawn on it (a frame at a cue's time
    differs from the source's where the subtitle is, and not elsewhere); an audio-only
    source gets a 409 for its video and completes all the same."""
    stack = stack_factory()
    stack.worker()
    tid = stack.submit_url(f"{files.url}/subtitled.html", subtitles_first=True,
                           burn_subtitles=True)
    audio_only = stack.upload(media["speech"], burn_subtitles="true")
    task = stack.finished(tid)
    assert task["status"] == "completed", task
    segs = stack.http.get(f"/api/v1/task/{tid}/segments").json()
    assert [(s["start_ms"], s["end_ms"], s["text"]) for s in segs] == [
        (500, 3200, "大家好，欢迎来到听记的讲座。"), (3400, 7000, "今天我们讲语音识别。"),
        (7500, 9900, "谢谢大家！")]
    assert task["result"]["model"] == "platform subtitles (zh)"
    used = [e for e in stack.events(tid) if e["event"] == "platform_subtitles_used"]
    assert [e["detail"] for e in used] == [{"lang": "zh", "cues": 3}]
    srt = check_srt(stack.http.get(f"/api/v1/download/{tid}", params={"format": "srt"}).text)
    assert srt[0][0] == 500 and srt[-1][1] == 9900
    assert (stack.data / "results" / tid / "audio.opus").is_file()  # the page can play it

    assert task["result"]["video"]["subtitles"] == "zh"
    video = stack.http.get(f"/api/v1/download/{tid}", params={"format": "mp4"})
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    burned = stack.data / "burned.mp4"
    burned.write_bytes(video.content)
    source = files.root / "lecture.mp4"
    for at, lit in ((2.0, True), (7.2, False)):  # inside the first cue; between cues
        a, b = frame(source, at), frame(burned, at)
        # pixels far brighter or darker than the source's (white text, its outline)
        changed = [abs(x - y) > 60 for x, y in zip(a, b, strict=True)]
        assert sum(changed[:90 * 320]) == 0  # the top half: the picture, re-encoded
        assert (sum(changed[120 * 320:]) > 150) == lit, (at, sum(changed[120 * 320:]))
    done = stack.finished(audio_only)
    assert done["status"] == "completed" and "no video stream" in done["result"]["video"][
        "error"]
    refused = stack.http.get(f"/api/v1/download/{audio_only}", params={"format": "mp4"})
    assert refused.status_code == 409 and "no video stream" in refused.text


def frame(video: Path, at: float) -> bytes:
    """The picture at ``at`` seconds, grey levels, 320x180."""
    return subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", str(at), "-i", str(video),
         "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-s", "320x180", "-"],
        check=True, capture_output=True).stdout


def test_polish_and_summary_survive_500s(stack_factory: Callable[..., Stack],
                                         media: dict[str, Path], llm: LlmStub) -> None:
    llm.b.fail_first = 2
    stack = stack_factory(TINGJI_LLM_BASE_URL=llm.base_url, TINGJI_LLM_MODEL="stub-chat",
                          TINGJI_LLM_CHUNK_CHARS="60")
    stack.worker()
    tid = stack.upload(media["speech"], summarize="true", temperature="0.2")
    task = stack.finished(tid)
    assert task["status"] == "completed", task
    r = task["result"]
    assert r["polished_text"].count("【润色】") >= 2  # several chunks
    # summarized the polished text (in one round, or a summary of the chunks' summaries
    # when it is longer than a chunk: the stub marks each round)
    assert re.match(r"(【摘要】)+【润色】", r["summary"]), r["summary"]
    assert r["llm_tokens_in"] > 0 and r["llm_tokens_out"] > 0
    failed = [c for c in llm.b.calls if c["failed"]]
    assert len(failed) == 2 and task["attempts"] == 1  # the client retried, not the queue
    md = stack.http.get(f"/api/v1/download/{tid}", params={"format": "md"}).text
    assert "【摘要】" in md and "【润色】" in md


def test_truncated_polish_is_resplit(stack_factory: Callable[..., Stack],
                                     media: dict[str, Path], llm: LlmStub) -> None:
    llm.b.truncate_over = 25
    stack = stack_factory(TINGJI_LLM_BASE_URL=llm.base_url, TINGJI_LLM_MODEL="stub-chat",
                          TINGJI_LLM_CHUNK_CHARS="80")
    stack.worker()
    tid = stack.upload(media["speech"])
    task = stack.finished(tid)
    assert task["status"] == "completed", task
    polish_calls = [c for c in llm.b.calls if c["kind"] == "polish"]
    assert any(c["chars"] > 25 for c in polish_calls)  # truncated ones were re-split
    assert all(c["chars"] <= 80 for c in polish_calls)
    text = task["result"]["polished_text"]
    # every piece that came back is a complete polish of its input
    assert text.count("【润色】") == sum(1 for c in polish_calls if c["chars"] <= 25)


def test_polish_that_keeps_truncating_fails_retryable(stack_factory: Callable[..., Stack],
                                                      media: dict[str, Path],
                                                      llm: LlmStub) -> None:
    llm.b.truncate_over = 0  # every reply is cut off
    stack = stack_factory(TINGJI_LLM_BASE_URL=llm.base_url, TINGJI_LLM_MODEL="stub-chat",
                          TINGJI_MAX_ATTEMPTS="2")
    stack.worker()
    tid = stack.upload(media["speech"])
    task = stack.finished(tid)
    assert task["status"] == "failed" and task["attempts"] == 2
    assert "truncated" in task["error"]["message"]
    events = [(e["event"], (e["detail"] or {}).get("stage")) for e in stack.events(tid)]
    # the retry resumed at polish: one transcription only
    assert events.count(("stage_started", "transcribe")) == 1
    assert events.count(("stage_started", "polish")) == 2


def test_five_tasks_one_model_load(stack_factory: Callable[..., Stack],
                                   media: dict[str, Path]) -> None:
    stack = stack_factory()
    worker = stack.worker(preload=False)
    tids = [stack.upload(media["speech" if i % 2 else "mp3"]) for i in range(5)]
    for tid in tids:
        assert stack.finished(tid)["status"] == "completed"
    [w] = [w for w in stack.http.get("/api/v1/queue").json()["workers"] if w["pid"] == worker.pid]
    assert w["model_loads"] == 1 and w["model_loaded_at"]
    assert "(1 thread)" in worker.output()  # TINGJI_ASR_THREADS (tests.helpers.procs)


def test_ready_tasks_are_transcribed_together_with_the_same_results(
        stack_factory: Callable[..., Stack], media: dict[str, Path]) -> None:
    files = [media["speech"], media["mp3"], media["video"], media["speech"]]
    results = {}
    for k in ("1", "3"):
        # K=3 also runs VAD in processes ahead of the lane; K=1 in the lane
        stack = stack_factory(TINGJI_ASR_BATCH_TASKS=k,
                              TINGJI_VAD_PROCESSES="2" if k == "3" else "0")
        tids = [stack.upload(f) for f in files]  # all queued before the worker starts
        worker = stack.worker()
        tasks = [stack.finished(t) for t in tids]
        assert all(t["status"] == "completed" for t in tasks), tasks
        segs = [stack.http.get(f"/api/v1/task/{t}/segments").json() for t in tids]
        results[k] = ([t["result"]["text"] for t in tasks], segs,
                      [t["result"]["asr_group"] for t in tasks])
        [w] = [w for w in stack.http.get("/api/v1/queue").json()["workers"]
               if w["pid"] == worker.pid]
        assert w["model_loads"] == 1
    assert results["1"][2] == [None] * 4  # one task per group
    # tasks become ready as their VAD ends, so how they group depends on timing; they
    # are grouped (the lane waits briefly for tasks still in VAD), never more than K
    groups = results["3"][2]
    assert any(g and g["tasks"] >= 2 for g in groups), groups
    assert all(g is None or g["tasks"] <= 3 for g in groups)
    # the same text and segment timestamps as one task at a time
    assert results["3"][0] == results["1"][0]
    assert results["3"][1] == results["1"][1]


def test_cancel_inside_a_group_stops_that_task_only(stack_factory: Callable[..., Stack],
                                                   media: dict[str, Path]) -> None:
    stack = stack_factory(TINGJI_ASR_BATCH_TASKS="3")
    long = stack.upload(media["long"])
    others = [stack.upload(media["speech"]), stack.upload(media["mp3"])]
    stack.worker()
    stack.wait(lambda: (t := stack.task(long))["stage"] == "transcribe" and
               t["progress"] > 0.05, 90, "the group never started decoding")
    assert all(stack.task(o)["stage"] == "transcribe" for o in others)  # one group
    t = time.monotonic()
    assert stack.http.post(f"/api/v1/task/{long}/cancel").json()["status"] == "processing"
    assert stack.finished(long, 30)["status"] == "cancelled"
    assert time.monotonic() - t < 10
    for o in others:
        task = stack.finished(o)
        assert task["status"] == "completed" and task["result"]["asr_group"]["tasks"] == 3


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_fail_clearly_and_affect_nothing_else(
        stack_factory: Callable[..., Stack], media: dict[str, Path], files: FileServer) -> None:
    from tests.helpers.procs import free_port
    stack = stack_factory(TINGJI_MAX_ATTEMPTS="2")
    stack.worker()
    good = stack.upload(media["speech"])
    bad = {
        "text as mp3": (stack.upload(media["text_mp3"]), "not audio or video"),
        "silent video": (stack.upload(media["silent_video"]), "no audio stream"),
        "404": (stack.submit_url(f"{files.url}/missing.mp4"), "HTTP 404"),
    }
    unreachable = stack.submit_url(f"http://127.0.0.1:{free_port()}/a.mp4")
    good2 = stack.upload(media["mp3"])
    for name, (tid, words) in bad.items():
        task = stack.finished(tid, 120)
        assert task["status"] == "failed", (name, task)
        assert words in task["error"]["message"], (name, task["error"])
        assert "Traceback" not in task["error"]["message"]
    assert stack.task(bad["text as mp3"][0])["attempts"] == 1  # permanent: no retry
    # the network may come back: tried again later, without using up attempts
    waiting = stack.wait(lambda: (t := stack.task(unreachable))["error"] and t, 60, "a retry")
    assert waiting["status"] == "pending" and waiting["error"]["code"] == "network"
    assert waiting["next_attempt_at"] and waiting["attempts"] == 0  # given back
    assert "download failed" in waiting["error"]["message"]
    for tid in (good, good2):
        assert stack.finished(tid)["status"] == "completed"
    # what is not media is not kept for a retry that cannot help (nor served to workers):
    # with the completed tasks' uploads, nothing is left
    stack.wait(lambda: not any((stack.data / "uploads").iterdir()), 10,
               "an upload that is not media was kept")


# ---------------------------------------------------------------- pipelining
def test_transcription_overlaps_another_tasks_polish(stack_factory: Callable[..., Stack],
                                                     media: dict[str, Path],
                                                     llm: LlmStub) -> None:
    llm.b.delay_s = 1.0
    stack = stack_factory(TINGJI_LLM_BASE_URL=llm.base_url, TINGJI_LLM_MODEL="stub-chat",
                          TINGJI_LLM_CHUNK_CHARS="60")
    stack.worker()
    tids = [stack.upload(media["speech"]) for _ in range(3)]
    for tid in tids:
        assert stack.finished(tid)["status"] == "completed"
    db = sqlite3.connect(stack.data / "tingji.db")
    rows = db.execute("SELECT task_id, event, json_extract(detail, '$.stage'), at "
                      "FROM task_events WHERE event LIKE 'stage_%' ORDER BY id").fetchall()
    spans: dict[tuple[str, str], list[str]] = {}
    for task_id, _event, stage, at in rows:
        spans.setdefault((task_id, stage), []).append(at)
    overlaps = [(a, b) for a in tids for b in tids if a != b
                and spans[(a, "transcribe")][0] < spans[(b, "polish")][1]
                and spans[(b, "polish")][0] < spans[(a, "transcribe")][1]]
    assert overlaps, spans

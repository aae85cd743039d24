"""Crashes and stops of a real worker process, inside each stage: SIGKILL (a crash, a
power cut), SIGTERM (a restart), a model that does not load, memory past its limit.
Nothing is lost, nothing is done twice, and what was finished is not redone."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.procs import Proc
from tests.helpers.servers import LlmStub
from tests.helpers.stack import Stack

pytestmark = pytest.mark.slow


def _wait_stage(stack: Stack, tid: str, stage: str, min_progress: float = 0.0,
                pause: Proc | None = None) -> None:
    """Wait for the task's stage; with ``pause``, leave that worker stopped there."""
    def there() -> bool:
        return bool((t := stack.task(tid))["stage"] == stage and t["progress"] >= min_progress)
    if pause:
        stack.pause_when(pause, there, 90, f"{tid} never reached {stage}")
    else:
        stack.wait(there, 90, f"{tid} never reached {stage}")


def _decoded_share(stack: Stack, tid: str) -> float:
    """How much of the task's speech its transcription checkpoints hold."""
    with sqlite3.connect(f"file:{stack.data / 'tingji.db'}?mode=ro", uri=True) as db:
        head = db.execute("SELECT speech_s FROM transcribe_partials WHERE task_id = ?",
                          (tid,)).fetchone()
        done = db.execute("SELECT coalesce(sum(seconds), 0) FROM transcribe_pieces "
                          "WHERE task_id = ?", (tid,)).fetchone()[0]
    return done / head[0] if head and head[0] else 0.0


def test_sigkill_during_transcribe_resumes_where_the_checkpoints_end(
        stack_factory: Callable[..., Stack], media: dict[str, Path], tmp_path: Path) -> None:
    """Killed twice inside the transcription of a long clip, past a third and again once
    the second worker has saved pieces of its own: each new worker continues after the
    decoded pieces the database kept (``transcribe_resumed``), the finished fetch is not
    redone, and the transcript is the one an uninterrupted run of the same audio gives."""
    from tests.helpers import media as m

    clip = m.convert(media["speech"], tmp_path / "lecture.wav", "-filter_complex",
                     "aloop=loop=6:size=2e9", "-ar", "16000", "-ac", "1")  # ~4.8 minutes
    # the tiny model decodes a minute of audio in a tenth of a second: small batches and
    # frequent writes, so that the checkpoints move in small steps
    stack = stack_factory(TINGJI_ASR_CHECKPOINT_S="0.05", TINGJI_CPU_BATCH_SIZE_S="10")
    worker = stack.worker()
    tid = stack.upload(clip)
    kept = 0.0
    for n in (1, 2):
        # past a third, then past what the first run kept: looked at only while the worker
        # is stopped, so it cannot finish between two looks
        past = 1 / 3 if n == 1 else kept
        stack.pause_when(worker, lambda past=past: _decoded_share(stack, tid) > past,
                         120, f"kill {n}: checkpoints past {past:.0%}")
        worker.kill(signal.SIGKILL)
        assert stack.task(tid)["status"] == "processing"
        kept = _decoded_share(stack, tid)
        assert kept > past
        worker = stack.worker()  # recovers the dead worker's task at start-up
        stack.wait(lambda n=n: len([e for e in stack.events(tid)
                                    if e["event"] == "transcribe_resumed"]) >= n,
                   120, "transcribe_resumed")
        resumed = [e for e in stack.events(tid) if e["event"] == "transcribe_resumed"][-1]
        partial = resumed["detail"]
        assert partial["segments"] > 0 and partial["from_s"] > 0
        assert stack.task(tid)["progress"] >= kept * 0.9  # never back to zero
    task = stack.finished(tid, 180)
    assert task["status"] == "completed" and task["attempts"] == 3, task
    events = stack.events(tid)
    assert [e["event"] for e in events].count("lease_expired") == 2
    fetches = [e for e in events if e["event"] == "stage_started"
               and e["detail"]["stage"] == "fetch"]
    assert len(fetches) == 1  # the finished fetch was not redone
    with sqlite3.connect(stack.data / "tingji.db") as db:  # gone with the checkpoint
        assert db.execute("SELECT count(*) FROM transcribe_pieces").fetchone()[0] == 0

    again = stack.upload(clip, reuse="false")  # the same audio, never stopped
    assert stack.finished(again, 180)["status"] == "completed"
    segs = [stack.http.get(f"/api/v1/task/{t}/segments").json() for t in (tid, again)]
    assert segs[0] and segs[0] == segs[1]
    worker.stop()


def test_a_worker_over_its_memory_limit_recycles_without_losing_tasks(
        stack_factory: Callable[..., Stack], media: dict[str, Path]) -> None:
    """TINGJI_WORKER_MAX_RSS_MB below what a loaded worker holds: after its first task
    it stops claiming, finishes what it holds, records ``worker_recycled`` and exits
    with 75 (``tingji run`` restarts it at once); no lease expires, nothing is lost, and
    the next worker takes the rest."""
    from worker.recycle import EXIT_RECYCLE

    stack = stack_factory(TINGJI_WORKER_MAX_RSS_MB="50")
    tids = [stack.upload(media["speech"]), stack.upload(media["mp3"]),
            stack.upload(media["video"])]
    first = stack.worker()
    assert first.popen.wait(timeout=120) == EXIT_RECYCLE, first.output()[-3000:]
    done = [t for t in tids if stack.task(t)["status"] == "completed"]
    statuses = [stack.task(t)["status"] for t in tids]
    assert done and set(statuses) <= {"completed", "pending"}, (statuses, first.output()[-3000:])
    recycled = [e for t in tids for e in stack.events(t) if e["event"] == "worker_recycled"]
    assert len(recycled) == 1 and recycled[0]["detail"]["rss_mb"] > 50
    stack.env.pop("TINGJI_WORKER_MAX_RSS_MB")  # the next one stays (it would recycle too)
    stack.worker(wait_loaded=False)  # as `tingji run` does at once
    for t in tids:
        assert stack.finished(t)["status"] == "completed"
    assert not [e for t in tids for e in stack.events(t) if e["event"] == "lease_expired"]


def test_sigkill_during_polish_does_not_transcribe_again(
        stack_factory: Callable[..., Stack], media: dict[str, Path], llm: LlmStub) -> None:
    llm.b.delay_s = 3.0
    stack = stack_factory(TINGJI_LLM_BASE_URL=llm.base_url, TINGJI_LLM_MODEL="stub-chat")
    first = stack.worker()
    tid = stack.upload(media["speech"])
    _wait_stage(stack, tid, "polish")
    first.kill(signal.SIGKILL)
    llm.b.delay_s = 0.0
    stack.worker()
    task = stack.finished(tid)
    assert task["status"] == "completed" and task["attempts"] == 2
    stages = [e["detail"]["stage"] for e in stack.events(tid) if e["event"] == "stage_started"]
    assert stages.count("transcribe") == 1 and stages.count("polish") == 2


@pytest.mark.parametrize("drain", ["0", "300"])
def test_sigterm_never_leaves_a_task_processing(stack_factory: Callable[..., Stack],
                                                media: dict[str, Path], drain: str) -> None:
    """Stopped at once, the task goes back to the queue; given time to drain, it ends.
    (The long clip takes seconds alone and up to a minute beside a busy test run.)"""
    stack = stack_factory(TINGJI_DRAIN_SECONDS=drain)
    worker = stack.worker()
    tid = stack.upload(media["long"])
    _wait_stage(stack, tid, "transcribe", 0.05, pause=worker)
    worker.kill(signal.SIGTERM, wait=int(drain) + 60)
    assert worker.popen.returncode == 0, worker.output()
    task = stack.task(tid)
    if drain == "0":
        assert task["status"] == "pending"
        assert stack.events(tid)[-1]["event"] == "released"
    else:
        assert task["status"] == "completed"
    [w] = [w for w in stack.http.get("/api/v1/queue").json()["workers"] if w["pid"] == worker.pid]
    assert not w["alive"] and w["current_task_id"] is None


def test_cancel_during_transcribe_stops_within_seconds(stack_factory: Callable[..., Stack],
                                                       media: dict[str, Path]) -> None:
    stack = stack_factory()
    worker = stack.worker()
    tid = stack.upload(media["long"])
    other = stack.upload(media["speech"])
    _wait_stage(stack, tid, "transcribe", 0.05, pause=worker)
    t = time.monotonic()
    assert stack.http.post(f"/api/v1/task/{tid}/cancel").json()["status"] == "processing"
    worker.resume()
    task = stack.finished(tid, 30)
    took = time.monotonic() - t
    assert task["status"] == "cancelled", task
    assert took < 10, f"cancel took {took:.1f} s"
    # the model is free for the next task
    assert stack.finished(other)["status"] == "completed"


def test_model_that_does_not_load_stops_the_worker_and_keeps_the_tasks(
        stack_factory: Callable[..., Stack], media: dict[str, Path],
        tiny_models: dict[str, str], tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken-asr"
    shutil.copytree(tiny_models["asr"], broken)
    cfg = broken / "config.yaml"
    cfg.write_text(cfg.read_text().replace("model: SeacoParaformer", "model: NoSuchModel"))
    stack = stack_factory(TINGJI_ASR_MODEL=str(broken), TINGJI_ASR_BATCH_TASKS="2")
    tids = [stack.upload(media["speech"]), stack.upload(media["mp3"])]
    worker = stack.worker(preload=False)  # the first group loads the model
    assert worker.popen.wait(120) == 3
    assert "cannot load ASR model" in worker.output()
    for tid in tids:  # handed back untouched for a worker that can run them
        task = stack.task(tid)
        assert task["status"] == "pending" and task["error"] is None, task
        assert stack.events(tid)[-1]["event"] == "released"


def _children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def test_vad_processes_die_with_a_killed_worker(stack_factory: Callable[..., Stack],
                                                media: dict[str, Path]) -> None:
    stack = stack_factory(TINGJI_VAD_PROCESSES="2")
    worker = stack.worker()
    tid = stack.upload(media["speech"])  # VAD in the pool, then the lane
    assert stack.finished(tid)["status"] == "completed"
    kids = _children(worker.pid)
    assert len(kids) >= 2, kids  # the pool's processes (and multiprocessing's tracker)
    worker.kill(signal.SIGKILL)
    stack.wait(lambda: not any(Path(f"/proc/{k}").exists() for k in kids), 15,
               f"VAD processes {kids} outlived their worker")



"""One task's run (``worker.pipeline.TaskRun``) in process: a real, migrated SQLite file,
the real queue, scheduler, ffmpeg and result files, and a small fake ASR lane in place
of the model (it answers each job with sentences made from the audio's length, and
counts its calls).  What the run writes, where it resumes, and how a stop ends it."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from db import migrate
from db.engine import make_engine
from db.models import Stage, TaskKind, TaskStatus
from db.queue import Queue
from db.reads import Reads
from db.values import NewTask, SegmentRow
from tingji.settings import Settings
from worker.batching import AsrJob, BatchStats
from worker.engines.base import Assembled
from worker.pipeline import RunContext, StopReason, TaskRun
from worker.scheduler import AsrScheduler

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


@dataclass
class FakeLane:
    """The worker's ASR lane as the pipeline and the scheduler see it: one sentence per
    second of audio; ``gate`` holds a group until it is set."""

    groups: list[list[str]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    loaded: bool = True
    device: str = "cpu"
    description: str = "fake-asr"
    key: str | None = "fake-asr on cpu"

    async def detect_vad(self, audio: Path) -> None:
        return None

    def take_speaker_loads(self) -> str | None:
        return None

    async def ensure_loaded(self) -> bool:
        return False

    async def transcribe_many(self, jobs: list[AsrJob]) -> BatchStats:
        import soundfile as sf

        self.groups.append([j.audio.parent.name for j in jobs])
        if self.gate is not None:
            await self.gate.wait()
        for job in jobs:
            if job.stop.is_set():
                continue
            seconds = int(sf.info(str(job.audio)).duration)
            job.speech_s = float(seconds)
            job.progress(seconds, seconds)
            rows = [SegmentRow(n * 1000, n * 1000 + 900, f"第{n + 1}句。") for n in range(seconds)]
            job.result = Assembled("".join(r.text for r in rows), rows)
        return BatchStats(tasks=len(jobs))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    from tests.helpers import media as m

    data = tmp_path / "data"
    (data / "uploads").mkdir(parents=True)
    await asyncio.to_thread(migrate.upgrade, f"sqlite:///{data / 'tingji.db'}")
    settings = Settings.from_env({"TINGJI_DATA_DIR": str(data)})
    engine = make_engine(settings.database_url)
    queue, reads = Queue(engine), Reads(engine)
    m.speech_wav(data / "uploads" / "stored.wav", m.SENTENCES[:2])
    lane = FakeLane()
    scheduler = AsrScheduler(lane, 1)  # type: ignore[arg-type]
    ctx = RunContext("w1", settings, queue, reads, lane, scheduler, None, asyncio.Semaphore(2))
    yield {"ctx": ctx, "queue": queue, "reads": reads, "lane": lane, "data": data}
    await scheduler.close()
    await engine.dispose()


async def _claimed(world: dict[str, Any], **options: Any) -> TaskRun:
    queue: Queue = world["queue"]
    await queue.enqueue(NewTask(TaskKind.UPLOAD, {
        "upload": {"stored_name": "stored.wav", "filename": "讲座.wav"}, "options": options}))
    [task] = await queue.claim_next("w1")
    return TaskRun(task, world["ctx"])


async def test_a_run_writes_checkpoints_segments_and_files(world: dict[str, Any]) -> None:
    run = await _claimed(world)
    result = await run.run()
    reads: Reads = world["reads"]
    cps = await reads.checkpoints(run.id)
    assert {Stage.FETCH, Stage.TRANSCRIBE, Stage.EXPORT} <= set(cps)
    segments = await reads.segments(run.id)
    assert segments and [s.text for s in segments][0] == "第1句。"
    assert result["title"] == "讲座" and result["segments"] == len(segments)
    assert result["model"] == "fake-asr" and result["duration_s"] > 1
    assert set(result["files"]) >= {"result.txt", "result.srt", "result.json"}
    srt = (world["data"] / "results" / run.id / "result.srt").read_text(encoding="utf-8")
    assert "00:00:00,000 --> 00:00:00,900" in srt and "第1句。" in srt
    assert run.progress == 1.0


async def test_a_run_resumes_after_its_last_checkpoint(world: dict[str, Any]) -> None:
    """A second run of the same task (its worker died after transcribing): no second
    transcription, the same result."""
    run = await _claimed(world)
    first = await run.run()
    again = TaskRun(run.task, world["ctx"])
    second = await again.run()
    assert len(world["lane"].groups) == 1
    keep = ("text", "segments", "duration_s", "title", "files")
    assert {k: second[k] for k in keep} == {k: first[k] for k in keep}


async def test_a_cancelled_run_stops_inside_transcription(world: dict[str, Any]) -> None:
    from worker.errors import TaskCancelled

    world["lane"].gate = asyncio.Event()
    run = await _claimed(world)
    running = asyncio.create_task(run.run())
    while not world["lane"].groups:
        await asyncio.sleep(0.01)
    run.stop(StopReason.CANCEL)
    world["lane"].gate.set()
    with pytest.raises((asyncio.CancelledError, TaskCancelled)):
        await running
    assert run.stop_reason is StopReason.CANCEL
    cps = await world["reads"].checkpoints(run.id)
    assert Stage.FETCH in cps and Stage.TRANSCRIBE not in cps
    task = await world["reads"].task(run.id)
    assert task is not None and task.status == TaskStatus.PROCESSING  # the worker records it


async def test_the_same_audio_reuses_a_completed_transcript(world: dict[str, Any]) -> None:
    """The same upload again takes the completed task's sentences (``transcript_reused``)
    and still makes its own outputs; ``reuse: false``, other hotwords, or a source that
    was pruned transcribe again."""
    from sqlalchemy import text

    queue: Queue = world["queue"]
    reads: Reads = world["reads"]
    lane: FakeLane = world["lane"]

    async def finished(**options: Any) -> tuple[TaskRun, dict[str, Any]]:
        run = await _claimed(world, **options)
        result = await run.run()
        await queue.complete(run.id, "w1", result)
        return run, result

    first, one = await finished()
    second, two = await finished()
    assert len(lane.groups) == 1  # not transcribed again
    events = [e for e in await reads.events(second.id) if e.event == "transcript_reused"]
    assert [e.detail for e in events] == [{"from_task": first.id}]
    assert await reads.segments(second.id) == await reads.segments(first.id)
    assert two["text"] == one["text"] and two["files"] == one["files"]
    assert (world["data"] / "results" / second.id / "result.srt").is_file()

    await finished(reuse=False)
    await finished(hotwords=["听记"])
    assert len(lane.groups) == 3
    async with queue.engine.begin() as conn:  # pruned: no longer a source
        await conn.execute(text("DELETE FROM tasks"))
    await finished()
    assert len(lane.groups) == 4

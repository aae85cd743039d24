"""The ASR scheduler's contract with a fake engine above it: grouping, admission,
cancellation and the one model load.  No model, no database: milliseconds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from worker.batching import AsrJob, BatchStats
from worker.scheduler import AsrScheduler


class FakeEngine:
    """Decodes a group in ``decode_s``; records the groups it saw."""

    def __init__(self, *, decode_s: float = 0.01, fail_load: bool = False) -> None:
        self.decode_s, self.fail_load = decode_s, fail_load
        self.loaded, self.loads, self.load_calls = False, 0, 0
        self.groups: list[list[str]] = []

    async def ensure_loaded(self) -> bool:
        self.load_calls += 1
        if self.fail_load:
            raise RuntimeError("no such model")
        if self.loaded:
            return False
        self.loaded, self.loads = True, self.loads + 1
        return True

    async def transcribe_many(self, jobs: list[AsrJob]) -> BatchStats:
        self.groups.append([j.audio.name for j in jobs])
        await asyncio.sleep(self.decode_s)
        for j in jobs:
            if j.alive:
                j.result = {"text": j.audio.name}
        return BatchStats(tasks=len(jobs))


def job(name: str) -> AsrJob:
    return AsrJob(Path(name))


async def test_ready_tasks_form_groups_of_at_most_k() -> None:
    engine = FakeEngine(decode_s=0.05)
    loaded: list[int] = []

    async def on_loaded() -> None:
        loaded.append(1)
    sched = AsrScheduler(engine, 3, on_loaded=on_loaded)  # type: ignore[arg-type]
    admitted: dict[str, float] = {}

    async def one(i: int) -> str:
        async def on_admitted(group_s: float) -> None:
            admitted[f"t{i}"] = group_s
        j = job(f"t{i}")
        done = await sched.transcribe(f"t{i}", 10.0, j, on_admitted=on_admitted)
        assert done.group_size == len(next(g for g in engine.groups if f"t{i}" in g))
        return str(j.result["text"])  # type: ignore[index]
    try:
        assert await asyncio.gather(*(one(i) for i in range(7))) == [f"t{i}" for i in
                                                                      range(7)]
    finally:
        await sched.close()
    assert sorted(len(g) for g in engine.groups) == [1, 3, 3]
    assert sorted(n for g in engine.groups for n in g) == sorted(admitted)
    assert set(admitted.values()) <= {10.0, 30.0}  # the group's audio, not the task's
    assert engine.loads == 1 and loaded == [1]  # loaded once, the hook called once


async def test_admission_waits_for_the_model_and_cancel_leaves_the_queue() -> None:
    engine = FakeEngine(decode_s=0.2)
    sched = AsrScheduler(engine, 1)  # type: ignore[arg-type]
    order: list[str] = []

    async def run(name: str) -> None:
        async def on_admitted(_: float) -> None:
            order.append(name)
        await sched.transcribe(name, 1.0, job(name), on_admitted=on_admitted)
    try:
        first = asyncio.create_task(run("a"))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(run("b"))  # behind "a": not admitted yet
        third = asyncio.create_task(run("c"))
        await asyncio.sleep(0.05)
        assert order == ["a"]
        waiting.cancel()  # cancelled while waiting: it just leaves
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.gather(first, third)
    finally:
        await sched.close()
    assert order == ["a", "c"] and engine.groups == [["a"], ["c"]]


async def test_a_refused_admission_does_not_hold_the_group() -> None:
    engine = FakeEngine()
    sched = AsrScheduler(engine, 4)  # type: ignore[arg-type]

    async def refuse(_: float) -> None:
        raise LookupError("cancel requested")  # e.g. stage_started saw a cancel

    async def accept(_: float) -> None:
        pass
    try:
        ok_job = job("ok")
        results = await asyncio.gather(
            sched.transcribe("x", 1.0, job("x"), on_admitted=refuse),
            sched.transcribe("ok", 1.0, ok_job, on_admitted=accept),
            return_exceptions=True)
    finally:
        await sched.close()
    assert isinstance(results[0], LookupError)
    assert ok_job.result == {"text": "ok"} and engine.groups == [["ok"]]


async def test_a_model_that_does_not_load_fails_every_job_once() -> None:
    engine = FakeEngine(fail_load=True)
    sched = AsrScheduler(engine, 2)  # type: ignore[arg-type]

    async def accept(_: float) -> None:
        pass
    try:
        jobs = [job(f"j{i}") for i in range(4)]
        await asyncio.gather(*(sched.transcribe(j.audio.name, 1.0, j, on_admitted=accept)
                               for j in jobs))
        with pytest.raises(RuntimeError):
            await sched.load()
    finally:
        await sched.close()
    assert all(isinstance(j.error, RuntimeError) for j in jobs)
    assert engine.load_calls == 1  # not retried per group

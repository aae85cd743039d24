"""Restarts cost nothing: graceful stops do not use up attempts, and a previous boot's
tasks are recovered at start-up.  Real server and worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from db.engine import make_engine
from db.models import TaskKind
from db.queue import Queue, QueueConfig
from db.values import NewTask
from tests.helpers.stack import Stack


def test_graceful_restarts_during_one_task_use_no_attempt(
        stack_factory: Callable[..., Stack], media: dict[str, Path]) -> None:
    """More restarts mid-transcription than the task has attempts: it still completes on
    its first attempt."""
    stack = stack_factory(TINGJI_MAX_ATTEMPTS="1", TINGJI_DRAIN_SECONDS="0")
    tid = stack.upload(media["long"])
    for n in range(2):
        worker = stack.worker()
        stack.pause_when(worker, lambda: (t := stack.task(tid))["stage"] == "transcribe"
                         and t["status"] == "processing", 90, f"restart {n}: not transcribing")
        worker.popen.send_signal(signal.SIGTERM)
        worker.resume()
        assert worker.popen.wait(timeout=60) == 0, worker.output()[-2000:]
        assert stack.task(tid)["status"] == "pending"
    stack.worker()
    task = stack.finished(tid, 180)
    assert task["status"] == "completed", task
    assert task["attempts"] == 1
    released = [e for e in stack.events(tid) if e["event"] == "released"]
    assert len(released) == 2 and not any(e["detail"]["counted"] for e in released)


def test_previous_boots_task_is_recovered_at_start(stack_factory: Callable[..., Stack],
                                                   media: dict[str, Path]) -> None:
    stack = stack_factory()
    url = f"sqlite:///{stack.data / 'tingji.db'}"
    ghost = "00000000-0000-0000-0000-00000000b007"

    async def before_the_reboot() -> str:
        engine = make_engine(url)
        q = Queue(engine, QueueConfig(lease_seconds=3600))  # the lease would last an hour
        try:
            # a worker of the previous boot, with a pid that is alive now (ours)
            await q.register(ghost, socket.gethostname(), os.getpid(),
                             boot_id="a-previous-boot")
            tid = (await q.enqueue(NewTask(TaskKind.UPLOAD, {
                "upload": {"stored_name": "missing.wav", "filename": "x.wav", "size": 1},
                "options": {}}))).task.id
            [task] = await q.claim_next(ghost)
            assert task.lease_expires_at is not None
            return tid
        finally:
            await engine.dispose()
    tid = asyncio.run(before_the_reboot())
    stack.worker()
    task = stack.finished(tid, 90)  # the worker starts, then long before the hour is up
    events = [e["event"] for e in stack.events(tid)]
    assert "lease_expired" in events and events.count("claimed") == 2
    expired = next(e for e in stack.events(tid) if e["event"] == "lease_expired")
    assert expired["detail"]["reason"] == "worker process gone"
    assert task["error"]["type"] == "MissingUpload"  # and it was then run by the new worker

"""The queue across real OS processes: exactly-once claims, SIGKILL recovery and
durability of acknowledged writes, on SQLite files and on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from db.engine import make_engine, sqlite_path
from db.models import Task, TaskKind, TaskStatus
from db.queue import NewTask, Queue, QueueConfig
from db.reads import Reads

ROOT = Path(__file__).resolve().parent.parent


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.helpers.queue_proc", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


async def fill(queue: Queue, n: int) -> set[str]:
    ids: set[str] = set()
    for start in range(0, n, 100):
        _, tasks, _ = await queue.enqueue_many(
            [NewTask(TaskKind.URL, {"video_url": f"https://x/{i}"})
             for i in range(start, min(n, start + 100))])
        ids.update(t.id for t in tasks)
    return ids


async def test_four_processes_claim_each_task_exactly_once(db_url: str,
                                                           tmp_path: Path) -> None:
    queue = Queue(make_engine(db_url), QueueConfig(max_pending=10_000))
    try:
        ids = await fill(queue, 500)
        gate = tmp_path / "gate"
        gate.mkdir()
        procs = [spawn("drain", db_url, f"worker-{i}", str(gate)) for i in range(4)]
        # all four connected before any claims: a late starter would find the queue
        # drained (the claim takes about a millisecond)
        for _ in range(6000):
            if len(list(gate.glob("ready-*"))) == 4 or any(p.poll() is not None
                                                           for p in procs):
                break
            await asyncio.sleep(0.01)
        (gate / "go").touch()
        outputs = [await asyncio.to_thread(p.communicate, timeout=240) for p in procs]
        for p, (_, err) in zip(procs, outputs, strict=True):
            assert p.returncode == 0, err[-2000:]
            assert "database is locked" not in err
        claims = Counter(line for out, _ in outputs for line in out.split())
        assert set(claims) == ids
        assert max(claims.values()) == 1
        # several processes took part (the claim is contended, not serial by accident);
        # not necessarily all four: SQLite's busy handler backs off, so under CPU load a
        # process can lose every race for the write lock while the others drain the queue
        assert sum(1 for out, _ in outputs if out.strip()) >= 2
        counts = await Reads(queue.engine).counts()
        assert counts["completed"] == 500 and counts["pending"] == counts["processing"] == 0
        async with queue.engine.connect() as conn:
            attempts = (await conn.execute(select(func.max(Task.attempts)))).scalar_one()
        assert attempts == 1
    finally:
        await queue.engine.dispose()


async def test_sigkilled_worker_task_is_requeued_and_finished_by_another(db_url: str) -> None:
    queue = Queue(make_engine(db_url), QueueConfig(lease_seconds=5))
    reads = Reads(queue.engine)
    try:
        tid = (await queue.enqueue(NewTask(TaskKind.URL, {"video_url": "https://x/1"}))).task.id
        holder = spawn("hold", db_url, "doomed-worker")
        line = await asyncio.to_thread(holder.stdout.readline)  # type: ignore[union-attr]
        assert line.strip() == tid
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        task = await reads.task(tid)
        assert task is not None and task.status == TaskStatus.PROCESSING
        assert await queue.requeue_expired() == []  # the lease is still running
        assert task.lease_expires_at is not None
        later = task.lease_expires_at + timedelta(seconds=1)
        assert await queue.requeue_expired(now=later) == [(tid, TaskStatus.PENDING)]
        finisher = spawn("finish", db_url, "rescuer")
        out, err = await asyncio.to_thread(finisher.communicate, timeout=60)
        assert finisher.returncode == 0, err
        assert out.strip() == tid
        task = await reads.task(tid)
        assert task is not None and task.status == TaskStatus.COMPLETED and task.attempts == 2
        story = [(e.event, e.worker_id) for e in await reads.events(tid)]
        assert story == [("enqueued", None), ("claimed", "doomed-worker"),
                         ("lease_expired", "doomed-worker"), ("claimed", "rescuer"),
                         ("completed", "rescuer")]
    finally:
        await queue.engine.dispose()


async def test_acknowledged_enqueues_survive_sigkill(db_url: str) -> None:
    writer = spawn("enqueue", db_url)
    acked: list[str] = []
    while len(acked) < 300:
        line = await asyncio.to_thread(writer.stdout.readline)  # type: ignore[union-attr]
        assert line, writer.stderr.read() if writer.stderr else ""
        acked.append(line.strip())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    path = sqlite_path(db_url)
    if path is not None:
        con = sqlite3.connect(path)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            con.close()
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            stored = set((await conn.execute(select(Task.id))).scalars())
        assert set(acked) <= stored
    finally:
        await engine.dispose()

"""Queue throughput through tingji's queue layer vs a raw sqlite3 loop, same machine,
same run, same schema and indexes.

    .venv/bin/python bench/queue.py [--n 2000] [--pg postgresql://postgres@127.0.0.1/test]

For each backend: enqueue (one task + its event per transaction) and
claim+complete (two transactions per task, each with its event), in tasks/s.  On SQLite
also the same layer without ``db.engine.hot`` (every statement through SQLAlchemy's
execution), in the same run: what the hot path pays.
The raw loop runs the same single-row statements with the stdlib sqlite3 module on a
database migrated by the same Alembic migration: the physical limit here.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the stdlib's `queue`: put the repository root, not this
# folder, first on the import path.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402

from db import migrate  # noqa: E402
from db.engine import HOT_PATH, make_engine  # noqa: E402
from db.models import TaskKind  # noqa: E402
from db.queue import NewTask, Queue, QueueConfig  # noqa: E402
from tests.helpers.pg import truncate  # noqa: E402


def ts(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(" ")


def raw_sqlite(path: Path, sync: str, n: int) -> tuple[float, float]:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={sync}")
    con.execute("PRAGMA busy_timeout=15000")
    con.execute("PRAGMA foreign_keys=ON")
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    for i in range(n):
        tid = str(uuid.uuid4())
        con.execute("BEGIN IMMEDIATE")
        con.execute(
            "INSERT INTO tasks (id, kind, status, progress, priority, payload, attempts,"
            " max_attempts, run_after, cancel_requested, created_at, updated_at)"
            " VALUES (?, 'url', 'pending', 0, 0, ?, 0, 3, ?, 0, ?, ?)",
            (tid, json.dumps({"video_url": f"https://x/{i}"}), ts(now), ts(now), ts(now)))
        con.execute("INSERT INTO task_events (task_id, at, event, to_status) VALUES"
                    " (?, ?, 'enqueued', 'pending')", (tid, ts(now)))
        con.execute("COMMIT")
    enq = n / (time.perf_counter() - t0)
    lease = ts(now + timedelta(seconds=60))
    t0 = time.perf_counter()
    for _ in range(n):
        con.execute("BEGIN IMMEDIATE")
        row = con.execute(
            "UPDATE tasks SET status='processing', lease_owner='w', lease_expires_at=?,"
            " attempts=attempts+1, started_at=coalesce(started_at, ?), updated_at=?"
            " WHERE id IN (SELECT id FROM tasks WHERE status='pending' AND run_after <= ?"
            " ORDER BY priority DESC, created_at, id LIMIT 1) AND status='pending'"
            " RETURNING id", (lease, ts(now), ts(now), ts(now))).fetchone()
        con.execute("INSERT INTO task_events (task_id, at, event, from_status, to_status,"
                    " worker_id) VALUES (?, ?, 'claimed', 'pending', 'processing', 'w')",
                    (row[0], ts(now)))
        con.execute("COMMIT")
        con.execute("BEGIN IMMEDIATE")
        con.execute("UPDATE tasks SET status='completed', progress=1, result='{}',"
                    " completed_at=?, updated_at=?, lease_owner=NULL, lease_expires_at=NULL"
                    " WHERE id=? AND status='processing' AND lease_owner='w'",
                    (ts(now), ts(now), row[0]))
        con.execute("INSERT INTO task_events (task_id, at, event, from_status, to_status,"
                    " worker_id) VALUES (?, ?, 'completed', 'processing', 'completed', 'w')",
                    (row[0], ts(now)))
        con.execute("COMMIT")
    cc = n / (time.perf_counter() - t0)
    con.close()
    return enq, cc


async def layer(url: str, sync: str, n: int, *, hot: bool = True) -> tuple[float, float]:
    HOT_PATH["on"] = hot
    engine = make_engine(url, sqlite_synchronous=sync)
    q = Queue(engine, QueueConfig(max_pending=10 * n))
    try:
        t0 = time.perf_counter()
        for i in range(n):
            await q.enqueue(NewTask(TaskKind.URL, {"video_url": f"https://x/{i}"}))
        enq = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(n):
            [task] = await q.claim_next("w")
            await q.complete(task.id, "w", {})
        cc = n / (time.perf_counter() - t0)
        return enq, cc
    finally:
        await engine.dispose()
        HOT_PATH["on"] = True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="a PostgreSQL database the benchmark may wipe ('' to skip)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tingji-bench-"))
    template = tmp / "template.db"
    migrate.upgrade(f"sqlite:///{template}")
    if a.pg:
        migrate.upgrade(a.pg)

    def fresh(name: str) -> Path:
        p = tmp / f"{name}-{uuid.uuid4().hex[:6]}.db"
        p.write_bytes(template.read_bytes())
        return p

    results: dict[str, list[tuple[float, float]]] = {}
    for r in range(a.repeat):
        for sync in ("FULL", "NORMAL"):
            results.setdefault(f"raw sqlite3 {sync}", []).append(
                raw_sqlite(fresh("raw"), sync, a.n))
            results.setdefault(f"tingji SQLite {sync}", []).append(
                asyncio.run(layer(f"sqlite:///{fresh('layer')}", sync, a.n)))
            results.setdefault(f"  without hot() {sync}", []).append(
                asyncio.run(layer(f"sqlite:///{fresh('cold')}", sync, a.n, hot=False)))
        if a.pg:
            asyncio.run(truncate(a.pg))
            results.setdefault("tingji PostgreSQL", []).append(
                asyncio.run(layer(a.pg, "FULL", a.n)))
        print(f"round {r + 1}/{a.repeat} done", file=sys.stderr)

    med = {k: (statistics.median(e for e, _ in v), statistics.median(c for _, c in v))
           for k, v in results.items()}
    print(f"n={a.n} tasks per run, median of {a.repeat} runs, tasks/s")
    print(f"{'':24} {'enqueue':>10} {'claim+complete':>15} {'enq/raw':>8} {'cc/raw':>8}")
    for k, (e, c) in med.items():
        raw = med.get(f"raw sqlite3 {k.rsplit(' ', 1)[-1]}")
        ratio = f"{e / raw[0]:8.2f} {c / raw[1]:8.2f}" if raw and "raw" not in k else ""
        print(f"{k:24} {e:10.0f} {c:15.0f} {ratio}")


if __name__ == "__main__":
    main()

"""The database goes away for a while: the API answers 503 with Retry-After within a
bounded wait, keeps nothing half-made, and serves again once it is back.  A real server
process and a real SQLite file."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from db.engine import BUSY_TIMEOUT_MS
from tests.helpers.stack import Stack


def test_a_held_sqlite_write_lock_gives_503_then_service(
        stack_factory: Callable[..., Stack], media: dict[str, Path]) -> None:
    """Another program holds SQLite's write lock for 30 s (``BEGIN IMMEDIATE`` in the
    sqlite3 shell) while the worker transcribes: a submission waits at most the busy
    timeout and is refused with 503 and Retry-After, never a 500 or a hung request;
    reads go on (WAL); the worker's writes wait and its task completes once; the same
    submission is taken afterwards, and the database is intact."""
    stack = stack_factory(TINGJI_ASR_CHECKPOINT_S="0.5")
    stack.worker()
    running = stack.upload(media["long"])
    stack.wait(lambda: stack.task(running)["stage"] == "transcribe", 120, "transcribing")
    submission = {"video_url": "http://127.0.0.1:9/lecture.mp4"}
    db = stack.data / "tingji.db"
    holder = sqlite3.connect(db, isolation_level=None, timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    locked_at = time.monotonic()
    try:
        refused = stack.http.post("/api/v1/process/bilibili", json=submission)
        waited = time.monotonic() - locked_at
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"]["code"] == "unavailable"
        assert "lock" in refused.json()["error"]["message"]
        assert waited < BUSY_TIMEOUT_MS / 1000 + 10  # bounded: the busy timeout, not forever
        assert stack.http.get("/health").status_code == 200  # readers are not blocked
        time.sleep(max(0.0, 30 - (time.monotonic() - locked_at)))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    tid = stack.submit_url(submission["video_url"])
    assert stack.task(tid)["status"] == "pending"
    task = stack.finished(running, timeout=180)
    assert task["status"] == "completed", task
    events = [e["event"] for e in stack.events(running)]
    assert events.count("completed") == 1 and "lease_expired" not in events, events
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()


def test_postgresql_restarted_and_stopped_mid_run_loses_and_duplicates_nothing(
        stack_factory: Callable[..., Stack], media: dict[str, Path], pg_migrated: str) -> None:
    """PostgreSQL (behind a relay the test takes down) restarts while the worker
    transcribes, then stays away for 30 s: the API answers 503 with Retry-After and
    /health says the database is down; the worker keeps its work, retries its writes
    and carries on; every task completes once, none is left processing, and what was
    refused while it was down is not in the queue."""
    from sqlalchemy.engine import make_url

    from tests.conftest import truncate_pg
    from tests.helpers.servers import TcpProxy

    truncate_pg(pg_migrated)
    relay = TcpProxy(make_url(pg_migrated).port or 5432)
    try:
        url = make_url(pg_migrated).set(port=relay.port).render_as_string(hide_password=False)
        stack = stack_factory(TINGJI_DATABASE_URL=url, TINGJI_ASR_CHECKPOINT_S="0.5")
        stack.worker()
        tids = [stack.upload(media["long"]), stack.upload(media["speech"]),
                stack.upload(media["mp3"])]
        stack.wait(lambda: stack.task(tids[0])["stage"] == "transcribe", 120, "transcribing")
        relay.restart()  # every connection reset at once, then back
        time.sleep(1)
        relay.down()
        gone_at = time.monotonic()
        asked = time.monotonic()
        with open(media["speech"], "rb") as fh:
            refused = stack.http.post("/api/v1/process/audio", files={"file": ("x.wav", fh)})
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        assert time.monotonic() - asked < 20  # bounded, not hung
        health = stack.http.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        time.sleep(max(0.0, 30 - (time.monotonic() - gone_at)))
        relay.up()
        for tid in tids:
            task = stack.finished(tid, timeout=240)
            assert task["status"] == "completed", task
            events = [e["event"] for e in stack.events(tid)]
            assert events.count("completed") == 1, events
        assert stack.http.get("/health").status_code == 200
        queue = stack.http.get("/api/v1/queue").json()
        assert queue["completed"] == len(tids) and queue["processing"] == 0
        assert queue["pending"] == 0  # the refused upload left no task
    finally:
        relay.close()

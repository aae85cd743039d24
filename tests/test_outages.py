"""The database goes away for a while: the API answers 503 with Retry-After within a
bounded wait, keeps nothing half-made, and serves again once it is back.  A real server
process and a real SQLite file."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from db.engine import BUSY_TIMEOUT_MS
from db.errors import disk_full
from tests.helpers.servers import FileServer
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 192 MB file system of its own (tmpfs), skipped where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192m", "tmpfs", str(disk)],
                          capture_output=True, text=True, check=False)
    if made.returncode:
        pytest.skip(f"cannot mount a small file system here: {made.stderr.strip()[:200]}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_the_sqlite_writer_recovers_once_its_disk_has_room(small_disk: Path) -> None:
    """Writes that fail because the disk is full leave the writer's held connection
    usable: once space is freed the next transaction commits."""
    from db import migrate
    from db.engine import make_engine, transactor

    url = f"sqlite:///{small_disk / 'tingji.db'}"
    migrate.upgrade(url)

    def write(conn: Any, n: int) -> None:
        conn.execute(text("CREATE TABLE IF NOT EXISTS big (b BLOB)"))
        conn.execute(text("INSERT INTO big VALUES (randomblob(:n))"), {"n": n})

    async def run() -> list[str]:
        engine = make_engine(url)
        tx, seen = transactor(engine), []
        filler = _fill(small_disk, leave=128 * 2**10)
        for size in (2**20, 2**20, None):
            if size is None:
                filler.unlink()
            try:
                await tx(write, size or 2**20)
                seen.append("ok")
            except Exception as exc:  # noqa: BLE001
                seen.append("full" if disk_full(exc) else repr(exc))
        await engine.dispose()
        return seen

    assert asyncio.run(run()) == ["full", "full", "ok"]


def _fill(disk: Path, leave: int) -> Path:
    """A file that takes all but ``leave`` bytes of ``disk``'s free space."""
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        while (free := shutil.disk_usage(disk).free) > leave:
            fh.write(b"\0" * min(free - leave, 4 * 2**20))
            fh.flush()
            os.fsync(fh.fileno())
    return filler


def test_a_full_disk_fails_nothing_for_good_and_corrupts_nothing(
        small_disk: Path, stack_factory: Callable[..., Stack], media: dict[str, Path],
        files: FileServer) -> None:
    """The data folder and its SQLite database on a small file system that fills up: an
    upload that does not fit is refused with 507 before its body and leaves no file; a
    task that cannot write its audio goes back to pending with ``disk_full`` and uses no
    attempt; /health shows the free space; once space is freed it completes, and the
    database is intact."""
    disk = small_disk
    data = disk / "data"
    stack = stack_factory(TINGJI_DATA_DIR=str(data), TINGJI_ASR_CHECKPOINT_S="0")
    stack.worker()
    before = stack.upload(media["speech"])
    assert stack.finished(before)["status"] == "completed"
    filler = _fill(disk, leave=256 * 2**10)
    assert stack.http.get("/health").json()["disk_free_mb"] <= 1

    uploads = set((data / "uploads").iterdir())
    with open(media["long"], "rb") as fh:
        refused = stack.http.post("/api/v1/process/audio", files={"file": ("l.wav", fh)})
    assert refused.status_code == 507, refused.text
    assert refused.json()["error"]["code"] == "disk_full"
    assert "disk" in refused.json()["error"]["message"]
    assert set((data / "uploads").iterdir()) == uploads  # nothing half-written

    def chunked() -> Iterator[bytes]:  # no Content-Length: refused when the disk says so
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="l.wav"\r\n\r\n'
        yield media["long"].read_bytes()[:2**20]
        yield b"\r\n--b--\r\n"

    streamed = stack.http.post("/api/v1/process/audio", content=chunked(),
                               headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 507, streamed.text
    assert streamed.json()["error"]["code"] == "disk_full"
    assert set((data / "uploads").iterdir()) == uploads

    tid = stack.submit_url(f"{files.url}/talk.mp4")
    waiting = stack.wait(lambda: (t := stack.task(tid))["error"] and t, 90, "a deferral")
    assert waiting["status"] == "pending" and waiting["error"]["code"] == "disk_full"
    assert "disk" in waiting["error"]["message"] and waiting["next_attempt_at"]
    assert waiting["attempts"] == 0

    filler.unlink()
    done = stack.finished(tid, timeout=180)
    assert done["status"] == "completed" and done["attempts"] == 1, done
    check = sqlite3.connect(data / "tingji.db")
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()
    assert stack.task(before)["status"] == "completed"

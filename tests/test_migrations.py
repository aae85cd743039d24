"""Schema through Alembic: upgrade, downgrade, upgrade again, no drift; the `tingji db`
commands from any directory, and several starters at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from db import migrate
from db.engine import make_engine
from tests.conftest import PG_URL
from tests.helpers.pg import admin

TINGJI = str(Path(sys.executable).with_name("tingji"))
TABLES = {"tasks", "task_events", "task_stages", "segments", "workers", "webhook_deliveries"}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with nothing in it (not even alembic_version)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh' / 'tingji.db'}"
        return
    if PG_URL == "skip":
        pytest.skip("PostgreSQL disabled")
    name = f"tingji_mig_{os.getpid()}"
    admin(PG_URL, f"DROP DATABASE IF EXISTS {name}")
    admin(PG_URL, f"CREATE DATABASE {name}")
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        admin(PG_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def tables(url: str) -> set[str]:
    async def run() -> set[str]:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()
    return asyncio.run(run())


def test_upgrade_downgrade_upgrade_without_drift(empty_url: str) -> None:
    head = migrate.head_revision()
    assert migrate.current(empty_url) is None
    assert migrate.upgrade(empty_url) == head
    assert TABLES <= tables(empty_url)
    migrate.check(empty_url)  # raises on drift
    migrate.downgrade(empty_url, "base")
    assert migrate.current(empty_url) is None
    assert not (TABLES & tables(empty_url))
    assert migrate.upgrade(empty_url) == head
    migrate.check(empty_url)
    assert migrate.upgrade(empty_url) == head  # idempotent


def _env(url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINGJI_")}
    env.update(TINGJI_DATABASE_URL=url, TINGJI_DATA_DIR=str(data_dir))
    return env


def test_tingji_db_commands_work_from_any_directory(empty_url: str, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(empty_url, tmp_path / "data")
    cur = subprocess.run([TINGJI, "db", "current"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=60)
    assert cur.returncode == 0, cur.stderr
    assert "behind head" in cur.stdout
    # several starters at once: all succeed, the schema is built exactly once
    procs = [subprocess.Popen([TINGJI, "db", "upgrade"], cwd=elsewhere, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert f"revision {migrate.head_revision()}" in out
    cur = subprocess.run([TINGJI, "db", "current"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=60)
    assert "up to date" in cur.stdout
    migrate.check(empty_url)


def test_default_database_lives_in_data_dir(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINGJI_")}
    env["TINGJI_DATA_DIR"] = str(tmp_path / "d")
    res = subprocess.run([TINGJI, "db", "upgrade"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "d" / "tingji.db").exists()


def test_bad_settings_are_all_reported(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINGJI_")}
    env.update(TINGJI_LEASE_SECONDS="soon", TINGJI_MAX_PENDING="0",
               TINGJI_DATABASE_URL="mysql://x/y", TINGJI_SQLITE_SYNCHRONOUS="fast")
    res = subprocess.run([TINGJI, "db", "upgrade"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    for var in ("TINGJI_LEASE_SECONDS", "TINGJI_MAX_PENDING", "TINGJI_DATABASE_URL",
                "TINGJI_SQLITE_SYNCHRONOUS"):
        assert var in res.stderr
    assert "Traceback" not in res.stderr


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    env = _env("postgresql://postgres@127.0.0.1:1/nothing", tmp_path)
    res = subprocess.run([TINGJI, "db", "upgrade"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "cannot reach the database" in res.stderr and "Traceback" not in res.stderr


def test_upgrade_to_durable_keys_keeps_every_task(empty_url: str) -> None:
    """0003 makes idempotency keys unique over all tasks: where finished tasks shared a
    key (allowed before), the key stays on the live or newest task; no row is lost."""
    migrate.upgrade(empty_url, "0002")

    def row(tid: str, status: str, key: str, minute: int) -> str:
        return (f"('{tid}', 'url', '{status}', 0, 0, '{{}}', 1, 3, "
                f"'2026-11-2{minute % 10} 08:0{minute}:00', false, '{key}', "
                f"'2026-11-20 08:0{minute}:00', '2026-11-20 08:0{minute}:00')")
    rows = [row("t1", "completed", "k-a", 1), row("t2", "failed", "k-a", 2),
            row("t3", "completed", "k-b", 3), row("t4", "pending", "k-b", 1),
            row("t5", "completed", "k-c", 4)]

    async def run(sql: str) -> list[Any]:
        engine = make_engine(empty_url)
        try:
            async with engine.begin() as conn:
                res = await conn.execute(text(sql))
                return list(res.all()) if res.returns_rows else []
        finally:
            await engine.dispose()
    asyncio.run(run(
        "INSERT INTO tasks (id, kind, status, progress, priority, payload, attempts, "
        "max_attempts, run_after, cancel_requested, idempotency_key, created_at, updated_at) "
        "VALUES " + ", ".join(rows)))
    assert migrate.upgrade(empty_url) == migrate.head_revision()
    got = dict(asyncio.run(run("SELECT id, idempotency_key FROM tasks ORDER BY id")))
    assert got == {"t1": None, "t2": "k-a", "t3": None, "t4": "k-b", "t5": "k-c"}
    migrate.check(empty_url)


def test_rebuilding_tasks_for_list_kinds_keeps_every_dependent_row(empty_url: str) -> None:
    """0005 rebuilds ``tasks`` on SQLite (a CHECK constraint cannot change in place); the
    rows that refer to tasks (events, checkpoints, segments, webhook deliveries) must
    survive the old table's DROP, and the new constraint must take ``list``."""
    migrate.upgrade(empty_url, "0004")

    async def run(*sqls: str) -> list[Any]:
        engine = make_engine(empty_url)
        out: list[Any] = []
        try:
            async with engine.begin() as conn:
                for sql in sqls:
                    res = await conn.execute(text(sql))
                    out = list(res.all()) if res.returns_rows else []
        finally:
            await engine.dispose()
        return out
    when = "'2026-11-20 08:00:00'"
    asyncio.run(run(
        "INSERT INTO tasks (id, kind, status, progress, priority, payload, attempts, "
        "max_attempts, run_after, cancel_requested, idempotency_key, batch_id, created_at,"
        f" updated_at) VALUES ('t1', 'url', 'completed', 1, 0, '{{}}', 1, 3, {when}, false,"
        f" 'k1', 'b1', {when}, {when})",
        f"INSERT INTO task_events (task_id, at, event) VALUES ('t1', {when}, 'enqueued')",
        f"INSERT INTO task_stages (task_id, stage, completed_at, output) VALUES "
        f"('t1', 'fetch', {when}, '{{}}')",
        "INSERT INTO segments (task_id, idx, start_ms, end_ms, text) VALUES "
        "('t1', 0, 0, 10, 'x')",
        "INSERT INTO webhook_deliveries (id, task_id, event, url, body, status, attempts,"
        f" next_attempt_at, created_at) VALUES ('d1', 't1', 'task.completed', "
        f"'http://x/', '{{}}', 'pending', 0, {when}, {when})"))
    assert migrate.upgrade(empty_url) == migrate.head_revision()
    counts = asyncio.run(run(
        "SELECT (SELECT count(*) FROM task_events), (SELECT count(*) FROM task_stages), "
        "(SELECT count(*) FROM segments), (SELECT count(*) FROM webhook_deliveries), "
        "(SELECT count(*) FROM tasks WHERE idempotency_key = 'k1' AND batch_id = 'b1')"))
    assert tuple(counts[0]) == (1, 1, 1, 1, 1)
    # 0010 rebuilt tasks and task_stages again (SQLite) for the notes' stages
    asyncio.run(run("UPDATE tasks SET stage = 'translate' WHERE id = 't1'",
                    f"INSERT INTO task_stages (task_id, stage, completed_at, output) VALUES "
                    f"('t1', 'chapters', {when}, '{{}}')"))
    for sql in ("UPDATE tasks SET stage = 'dance' WHERE id = 't1'",
                "UPDATE task_stages SET stage = 'dance' WHERE stage = 'chapters'"):
        with pytest.raises(Exception, match="(?i)check"):
            asyncio.run(run(sql))
    asyncio.run(run("UPDATE tasks SET kind = 'list' WHERE id = 't1'"))
    with pytest.raises(Exception, match="(?i)check"):  # the constraint is still there
        asyncio.run(run("UPDATE tasks SET kind = 'album' WHERE id = 't1'"))
    # foreign keys are on again outside migrations: deleting the task cascades
    asyncio.run(run("DELETE FROM tasks WHERE id = 't1'"))
    assert tuple(asyncio.run(run("SELECT count(*) FROM task_events"))[0]) == (0,)
    migrate.check(empty_url)
    asyncio.run(run("INSERT INTO tasks (id, kind, status, stage, progress, priority, payload, "
                    "attempts, max_attempts, run_after, cancel_requested, created_at, "
                    f"updated_at) VALUES ('t2', 'url', 'processing', 'mindmap', 0, 0, '{{}}',"
                    f" 1, 3, {when}, false, {when}, {when})"))
    migrate.downgrade(empty_url, "0009")  # a task in a notes' stage goes back to summarize
    assert asyncio.run(run("SELECT stage FROM tasks WHERE id = 't2'"))[0][0] == "summarize"
    migrate.downgrade(empty_url, "0004")
    assert migrate.upgrade(empty_url) == migrate.head_revision()


def test_alembic_by_hand_from_the_repository_root(tmp_path: Path) -> None:
    """``alembic upgrade head`` with the repository's ``alembic.ini`` (only our own
    settings in it: no logging template) migrates the database tingji's settings name."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINGJI_")}
    env["TINGJI_DATA_DIR"] = str(tmp_path)
    alembic = str(Path(sys.executable).with_name("alembic"))
    done = subprocess.run([alembic, "upgrade", "head"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    current = subprocess.run([alembic, "current"], cwd=root, env=env, capture_output=True,
                             text=True, timeout=120)
    assert "(head)" in current.stdout, current.stdout + current.stderr

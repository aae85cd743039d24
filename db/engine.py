"""Engines for SQLite (aiosqlite, WAL) and PostgreSQL (asyncpg), set up the same way
for the API, the worker, migrations and tests.

SQLite: every connection gets WAL, ``busy_timeout``, ``foreign_keys=ON`` and the
configured ``synchronous``.  pysqlite's own implicit BEGIN is switched off and we
emit ``BEGIN IMMEDIATE`` for every transaction on the default engine, so a writer
takes the write lock up front and waits in ``busy_timeout`` instead of failing at
once with "database is locked" when a deferred read upgrades to a write.  Engines
derived with ``reader(engine)`` begin with a plain deferred BEGIN (WAL readers never
block and are never blocked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

BUSY_TIMEOUT_MS = 15_000
_READONLY = "tingji_readonly"


def async_url(url: str) -> str:
    """``sqlite:///x`` -> aiosqlite, ``postgresql://`` -> asyncpg; explicit drivers kept."""
    u = make_url(url)
    if u.drivername == "sqlite":
        u = u.set(drivername="sqlite+aiosqlite")
    elif u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+asyncpg")
    return u.render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if not u.drivername.startswith("sqlite") or not u.database:
        return None
    return Path(u.database)


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 5,
                **kwargs: Any) -> AsyncEngine:
    target = async_url(url)
    path = sqlite_path(target)
    if path is None:
        kwargs.setdefault("pool_size", pool_size)
        kwargs.setdefault("max_overflow", pool_size)
        kwargs.setdefault("pool_pre_ping", True)
        return create_async_engine(target, **kwargs)

    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(target, **kwargs)
    sync = sqlite_synchronous.upper()

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (see _on_begin); pysqlite must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute(f"PRAGMA synchronous = {sync}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(_READONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def reader(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, but transactions begin deferred (for read-only work)."""
    return engine.execution_options(**{_READONLY: True})


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"

"""PostgreSQL chores shared by the tests and the benchmarks."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text

from db.engine import make_engine

TABLES = ("task_events", "task_stages", "segments", "workers", "tasks")


async def truncate(url: str) -> None:
    """Empties every table of a migrated database (the webhook outbox goes with the
    tasks it refers to)."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    finally:
        await engine.dispose()


def admin(url: str, sql: str) -> Any:
    """One statement outside a transaction (``CREATE DATABASE`` and the like) on
    ``url``'s server, through its ``postgres`` database (``url``'s own may not exist
    yet); its first value, when it returns rows."""
    from sqlalchemy.engine import make_url

    server = make_url(url).set(database="postgres").render_as_string(hide_password=False)

    async def run() -> Any:
        engine = make_engine(server, pool_size=1, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                result = await conn.execute(text(sql))
                return result.scalar() if result.returns_rows else None
        finally:
            await engine.dispose()
    return asyncio.run(run())


def ensure_database(url: str) -> None:
    """Create ``url``'s database when it does not exist."""
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    if not admin(url, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
        admin(url, f'CREATE DATABASE "{name}"')

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
    ``url``'s server; its first value, when it returns rows."""
    async def run() -> Any:
        engine = make_engine(url, pool_size=1, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                result = await conn.execute(text(sql))
                return result.scalar() if result.returns_rows else None
        finally:
            await engine.dispose()
    return asyncio.run(run())

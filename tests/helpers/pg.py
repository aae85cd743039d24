"""PostgreSQL chores shared by the tests and the benchmarks."""

from __future__ import annotations

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

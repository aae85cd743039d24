"""Read-only queries for the API, the CLI and the worker's resume logic.

They run on deferred (non-locking) transactions, so on SQLite in WAL mode they
never wait for a writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from db.engine import reader
from db.models import (
    Segment,
    Stage,
    Task,
    TaskEvent,
    TaskKind,
    TaskStage,
    TaskStatus,
    Worker,
)
from db.values import SegmentRow

T, E, S, SEG, W = (Task.__table__, TaskEvent.__table__, TaskStage.__table__,
                   Segment.__table__, Worker.__table__)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    stage: Stage
    completed_at: datetime
    seconds: float | None
    output: dict[str, Any]


class Reads:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = reader(engine)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def task(self, task_id: str) -> Task | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(T).where(T.c.id == task_id))).first()
        return Task(**row._mapping) if row else None

    async def tasks_by_ids(self, ids: list[str]) -> list[Task]:
        if not ids:
            return []
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(T).where(T.c.id.in_(ids)))).all()
        return [Task(**r._mapping) for r in rows]

    async def list_tasks(self, *, status: TaskStatus | None = None, batch_id: str | None = None,
                         id_prefix: str | None = None, limit: int = 50, offset: int = 0
                         ) -> tuple[list[Task], int]:
        cond = []
        if id_prefix:
            cond.append(T.c.id.like(id_prefix + "%"))
        if status is not None:
            cond.append(T.c.status == status)
        if batch_id is not None:
            cond.append(T.c.batch_id == batch_id)
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(T).where(*cond)))\
                .scalar_one()
            rows = (await conn.execute(select(T).where(*cond)
                                       .order_by(T.c.created_at.desc(), T.c.id.desc())
                                       .limit(limit).offset(offset))).all()
        return [Task(**r._mapping) for r in rows], int(total)

    async def upload_names(self) -> set[str]:
        """The stored file names of every upload a task still refers to."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(T.c.payload).where(
                T.c.kind == TaskKind.UPLOAD))).scalars().all()
        return {str(p["upload"]["stored_name"]) for p in rows
                if isinstance(p, dict) and isinstance(p.get("upload"), dict)
                and p["upload"].get("stored_name")}

    async def events(self, task_id: str) -> list[TaskEvent]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(E).where(E.c.task_id == task_id)
                                       .order_by(E.c.id))).all()
        return [TaskEvent(**r._mapping) for r in rows]

    async def events_since(self, after_id: int, limit: int = 500) -> list[TaskEvent]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(E).where(E.c.id > after_id)
                                       .order_by(E.c.id).limit(limit))).all()
        return [TaskEvent(**r._mapping) for r in rows]

    async def last_event_id(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.coalesce(func.max(E.c.id), 0))))
                       .scalar_one())

    async def checkpoints(self, task_id: str) -> dict[Stage, Checkpoint]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(S).where(S.c.task_id == task_id))).all()
        return {Stage(r.stage): Checkpoint(Stage(r.stage), r.completed_at, r.seconds, r.output)
                for r in rows}

    async def segments(self, task_id: str) -> list[SegmentRow]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(SEG).where(SEG.c.task_id == task_id)
                                       .order_by(SEG.c.idx))).all()
        return [SegmentRow(r.start_ms, r.end_ms, r.text, r.chars, r.speaker) for r in rows]

    async def counts(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(T.c.status, func.count())
                                       .group_by(T.c.status))).all()
        out = {s.value: 0 for s in TaskStatus}
        out.update({str(r[0]): int(r[1]) for r in rows})
        return out

    async def workers(self, *, include_stopped_for: timedelta = timedelta(hours=1),
                      now: datetime) -> list[Worker]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(W).where((W.c.stopped_at.is_(None))
                                | (W.c.stopped_at > now - include_stopped_for))
                .order_by(W.c.started_at.desc()))).all()
        return [Worker(**r._mapping) for r in rows]

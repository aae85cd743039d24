"""Read-only queries for the API, the CLI and the worker's resume logic.

They run on deferred (non-locking) transactions, so on SQLite in WAL mode they
never wait for a writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
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
    TranscribePartial,
    TranscribePiece,
    Worker,
)
from db.values import Partial, SegmentRow

T, E, S, SEG, W = (Task.__table__, TaskEvent.__table__, TaskStage.__table__,
                   Segment.__table__, Worker.__table__)
TP, TPC = TranscribePartial.__table__, TranscribePiece.__table__


@dataclass(frozen=True, slots=True)
class Checkpoint:
    stage: Stage
    completed_at: datetime
    seconds: float | None
    output: dict[str, Any]


STAGE_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass(frozen=True, slots=True)
class StageTimes:
    """A histogram of one stage's durations over every recorded checkpoint."""

    count: int
    total: float
    buckets: tuple[int, ...]  # cumulative counts at STAGE_BUCKETS (then +Inf = count)


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    """Everything ``GET /metrics`` reports, read in one go."""

    counts: dict[str, int]
    runnable: int  # pending and due now
    oldest_pending_at: datetime | None
    stages: dict[str, StageTimes]
    audio_seconds: float  # of completed tasks
    transcribe_seconds: float  # the same tasks' transcribe stage
    llm_tokens_in: int
    llm_tokens_out: int
    workers: list[Worker]


class Reads:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = reader(engine)

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
        """The stored file names of every upload a task still needs: not those of
        completed tasks (a worker on another machine completed it from its own copy)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(T.c.payload).where(
                T.c.kind == TaskKind.UPLOAD, T.c.status != TaskStatus.COMPLETED))).scalars().all()
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

    async def transcript_source(self, transcript_key: str, *, other_than: str
                                ) -> str | None:
        """The latest completed task whose transcript has this key (the same audio and
        transcription settings), other than ``other_than``; None when there is none (a
        pruned task is gone with its key)."""
        async with self.engine.connect() as conn:
            return (await conn.execute(
                select(T.c.id).where(T.c.transcript_key == transcript_key,
                                     T.c.status == TaskStatus.COMPLETED,
                                     T.c.id != other_than)
                .order_by(T.c.completed_at.desc()).limit(1))).scalar()

    async def partial_transcription(self, task_id: str) -> Partial | None:
        """What a run that was interrupted had decoded of the task's transcription."""
        async with self.engine.connect() as conn:
            head = (await conn.execute(select(TP).where(TP.c.task_id == task_id))).first()
            if head is None:
                return None
            rows = (await conn.execute(select(TPC).where(TPC.c.task_id == task_id))).all()
        return Partial(head.key, head.vad, head.pieces, head.speech_s,
                       {r.idx: r.result for r in rows},
                       round(sum(r.seconds for r in rows), 3))

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

    async def metrics(self, *, now: datetime) -> QueueMetrics:
        """Counts and sums for the Prometheus endpoint, computed by the database (no
        task's text is read)."""
        done = T.c.status == TaskStatus.COMPLETED
        seconds = S.c.seconds
        buckets = [func.sum(case((seconds <= b, 1), else_=0)) for b in STAGE_BUCKETS]
        async with self.engine.connect() as conn:
            counts = {s.value: 0 for s in TaskStatus}
            counts.update({str(r[0]): int(r[1]) for r in (await conn.execute(
                select(T.c.status, func.count()).group_by(T.c.status))).all()})
            pending = T.c.status == TaskStatus.PENDING
            runnable, oldest = (await conn.execute(select(
                func.sum(case((T.c.run_after <= now, 1), else_=0)),
                func.min(T.c.created_at)).where(pending))).one()
            stages = {str(r[0]): StageTimes(int(r[1]), float(r[2] or 0.0),
                                            tuple(int(b or 0) for b in r[3:]))
                      for r in (await conn.execute(
                          select(S.c.stage, func.count(seconds), func.sum(seconds), *buckets)
                          .where(seconds.is_not(None)).group_by(S.c.stage))).all()}
            audio, tokens_in, tokens_out = (await conn.execute(select(
                func.sum(T.c.result["duration_s"].as_float()),
                func.sum(T.c.result["llm_tokens_in"].as_integer()),
                func.sum(T.c.result["llm_tokens_out"].as_integer())).where(done))).one()
            transcribe = (await conn.execute(
                select(func.sum(seconds)).select_from(T.join(S, S.c.task_id == T.c.id))
                .where(done, S.c.stage == Stage.TRANSCRIBE))).scalar_one()
            workers = (await conn.execute(select(W).where(W.c.stopped_at.is_(None))
                                          .order_by(W.c.started_at))).all()
        return QueueMetrics(counts=counts, runnable=int(runnable or 0), oldest_pending_at=oldest,
                            stages=stages, audio_seconds=float(audio or 0.0),
                            transcribe_seconds=float(transcribe or 0.0),
                            llm_tokens_in=int(tokens_in or 0), llm_tokens_out=int(tokens_out or 0),
                            workers=[Worker(**r._mapping) for r in workers])

    async def workers(self, *, include_stopped_for: timedelta = timedelta(hours=1),
                      now: datetime) -> list[Worker]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(W).where((W.c.stopped_at.is_(None))
                                | (W.c.stopped_at > now - include_stopped_for))
                .order_by(W.c.started_at.desc()))).all()
        return [Worker(**r._mapping) for r in rows]

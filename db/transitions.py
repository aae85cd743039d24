"""The guarded helpers every queue operation is built of: one named status change
(``_transition``) checked against ``db.models.TRANSITIONS``, the ownership check of a
worker's writes (``_owned``: ``LeaseLost`` when the lease is gone), row locks, events
and the prepared statements they run.  ``db.queue.Queue`` combines this base with
the nouns built on it: ``db.submissions``, ``db.outbox``, ``db.workers`` and the
worker's side in ``db.queue`` itself.

Each public method of those is one transaction, with its ``task_events`` row written
in that same transaction.  Every method takes ``now`` (an aware UTC datetime) so tests
move the clock without sleeping; it defaults to the real clock.

On SQLite every write transaction begins ``BEGIN IMMEDIATE`` (see ``db.engine``), so
a read-then-write inside one method is serialized with every other writer.  On
PostgreSQL the same reads take ``FOR UPDATE`` row locks, and the claim skips rows
another worker has locked (``FOR UPDATE SKIP LOCKED``).
"""


import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Self

from sqlalchemy import Column, Row, Select, bindparam, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import configure_mappers
from sqlalchemy.sql.elements import ClauseElement

from db.engine import Patient, hot, transactor
from db.errors import (
    LeaseLost,
    TaskNotFound,
    TransitionNotAllowed,
)
from db.models import (
    TERMINAL,
    TRANSITIONS,
    EventType,
    Segment,
    Task,
    TaskEvent,
    TaskStage,
    TaskStatus,
    TranscribePartial,
    TranscribePiece,
    WebhookDelivery,
    Worker,
)

T = Task.__table__
E = TaskEvent.__table__
S = TaskStage.__table__
SEG = Segment.__table__
W = Worker.__table__
D = WebhookDelivery.__table__
TP, TPC = TranscribePartial.__table__, TranscribePiece.__table__

PENDING, PROCESSING = TaskStatus.PENDING, TaskStatus.PROCESSING
COMPLETED, FAILED, CANCELLED = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class QueueConfig:
    lease_seconds: int = 60
    max_attempts: int = 3
    max_pending: int = 1000
    backoff_base_seconds: float = 10.0
    # deferrable failures (a site's refusal, the network) are tried again without using
    # an attempt for this long (None: they use attempts like any other)
    defer_window: timedelta | None = timedelta(hours=12)
    defer_cap_seconds: float = 3600.0
    backoff_cap_seconds: float = 600.0
    queue_full_retry_after: int = 30
    # how long a transaction waits out a database outage before it raises (the API: not
    # at all, it answers 503; a worker's runs: minutes, keeping their work in memory)
    outage_patience_s: float = 0.0
    webhook_url: str | None = None  # every task's final status goes there too
    webhook_max_attempts: int = 12
    webhook_backoff_seconds: float = 10.0
    rng: random.Random = field(default_factory=random.Random)


def _task(row: Row[Any]) -> Task:
    """A detached snapshot of a tasks row.  Its values go straight into the instance's
    dict (as the ORM's own loading does): ``Task(**row)`` would fire an attribute event
    per column, a tenth of a claim's time."""
    task = _task_factory()()
    task.__dict__.update(row._mapping)
    return task


def _check(src: TaskStatus, dst: TaskStatus) -> None:
    if (src, dst) not in TRANSITIONS:
        raise TransitionNotAllowed(src, dst)


@cache
def _task_factory() -> Callable[[], Task]:
    """Makes empty ``Task`` instances, once the mappers are set up (what ``Task()``
    would do first: a fresh process may snapshot a task before anything else)."""
    configure_mappers()
    return Task.__mapper__.class_manager.new_instance  # type: ignore[no-any-return]


_NO_LEASE = {"lease_owner": None, "lease_expires_at": None}
# what a final status change reads back: enough to know whether a webhook is due (the
# result it just wrote, perhaps a whole transcript, is not read back)
_FINAL_COLUMNS = (T.c.id, T.c.payload, T.c.batch_id)

# Statements are built once per shape and reused with new parameters: SQLAlchemy then
# computes their cache key and compiled form once, not per call, and the SQLite writer
# runs them on its cursor (``db.engine.hot``).  Building, keying and executing
# statements through SQLAlchemy was most of a transition's cost on SQLite.
_PREPARED: dict[tuple[Any, ...], Any] = {}
_INSERT_TASK = hot(insert(T))
_INSERT_EVENT = hot(insert(E))


def _prepared(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    stmt = _PREPARED.get(key)
    if stmt is None:
        stmt = _PREPARED[key] = hot(build())
    return stmt


def _update_task(conn: Connection, where: dict[str, Any], values: dict[str, Any],
                 returning: Sequence[Column[Any]]) -> Row[Any] | None:
    """``UPDATE tasks SET values WHERE column = value AND ... RETURNING``, prepared once
    per shape (values that are SQL expressions make a one-off statement)."""
    exprs = {k: v for k, v in values.items() if isinstance(v, ClauseElement)}
    params = {"w_" + k: v for k, v in where.items()}
    params.update(("v_" + k, v) for k, v in values.items() if k not in exprs)

    def build() -> Any:
        return (update(T).where(*(T.c[k] == bindparam("w_" + k) for k in where))
                .values({**{k: bindparam("v_" + k) for k in values if k not in exprs},
                         **exprs})
                .returning(*returning))

    shape = ("update", *params, "|", *(c.key for c in returning))
    stmt = build() if exprs else _prepared(shape, build)
    return conn.execute(stmt, params).first()


class Transitions:
    def __init__(self, engine: AsyncEngine, config: QueueConfig | None = None) -> None:
        self.engine = engine
        self.config = config or QueueConfig()
        self._pg = engine.dialect.name == "postgresql"
        # Every method below is one transaction: a plain function of a sync Connection,
        # run whole by the engine's transactor (db.engine).
        self._tx = transactor(engine) if not self.config.outage_patience_s else \
            Patient(transactor(engine), self.config.outage_patience_s)

    @classmethod
    def from_settings(cls, engine: AsyncEngine, settings: Any) -> Self:
        return cls(engine, QueueConfig(
            lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts,
            max_pending=settings.max_pending,
            backoff_base_seconds=settings.retry_backoff_seconds,
            defer_window=timedelta(hours=settings.fetch_retry_hours)
            if settings.fetch_retry_hours > 0 else None,
            webhook_url=settings.webhook_url,
            webhook_max_attempts=settings.webhook_max_attempts,
            webhook_backoff_seconds=settings.webhook_retry_seconds))

    # ------------------------------------------------------------------ helpers
    def _lease(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.config.lease_seconds)

    def backoff(self, attempts: int, base: float | None = None,
                cap: float | None = None) -> timedelta:
        """Exponential backoff with equal jitter: half fixed, half random."""
        c = self.config
        base = c.backoff_base_seconds if base is None else base
        delay = min(c.backoff_cap_seconds if cap is None else cap,
                    base * 2 ** max(0, attempts - 1))
        return timedelta(seconds=delay / 2 + c.rng.random() * delay / 2)

    @staticmethod
    def _events(conn: Connection, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if rows:
            conn.execute(_INSERT_EVENT, rows)

    @staticmethod
    def _ev(task_id: str, event: EventType, now: datetime, src: TaskStatus | None = None,
            dst: TaskStatus | None = None, worker_id: str | None = None,
            detail: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"task_id": task_id, "at": now, "event": event.value,
                "from_status": src.value if src else None,
                "to_status": dst.value if dst else None,
                "worker_id": worker_id, "detail": detail}

    def _lock(self, stmt: Select[Any], *, skip_locked: bool = False) -> Select[Any]:
        """Row locks for a read-then-write on PostgreSQL.  SQLite needs none: every write
        transaction there is ``BEGIN IMMEDIATE`` (``db.engine``), serialized whole."""
        return stmt.with_for_update(skip_locked=skip_locked) if self._pg else stmt

    def _locked(self, conn: Connection, task_id: str) -> Row[Any]:
        stmt = _prepared(("locked", self._pg),
                         lambda: self._lock(select(T).where(T.c.id == bindparam("id"))))
        row = conn.execute(stmt, {"id": task_id}).first()
        if row is None:
            raise TaskNotFound(task_id)
        return row

    def _owned(self, conn: Connection, task_id: str, worker_id: str,
               values: dict[str, Any], returning: Sequence[Any] = ()) -> Row[Any]:
        """Update a task this worker holds; ``LeaseLost`` when it no longer does."""
        row = _update_task(conn, {"id": task_id, "status": PROCESSING, "lease_owner": worker_id},
                           values, (T.c.id, *returning))
        if row is None:
            raise LeaseLost(task_id, worker_id)
        return row

    def _transition(self, conn: Connection, task_id: str, src: TaskStatus,
                    dst: TaskStatus, event: EventType, now: datetime, *,
                    worker_id: str | None = None, values: dict[str, Any] | None = None,
                    detail: dict[str, Any] | None = None,
                    returning: Sequence[Any] = ()) -> Row[Any] | None:
        """The one status change: checked against ``TRANSITIONS``, guarded by ``status =
        src`` (and, for a worker, ``lease_owner = worker_id``: ``LeaseLost`` when that
        no longer holds), the lease cleared when leaving ``processing``,
        ``completed_at`` set when entering a terminal status, and the event written in
        the same transaction.  Returns the updated row (``returning`` columns), or None
        when a user-side guard matched nothing."""
        _check(src, dst)
        vals: dict[str, Any] = {"status": dst, "updated_at": now}
        if src is PROCESSING and dst is not PROCESSING:
            vals.update(_NO_LEASE)
        if dst in TERMINAL:
            vals["completed_at"] = now
        vals.update(values or {})
        where: dict[str, Any] = {"id": task_id, "status": src}
        if worker_id is not None:
            where["lease_owner"] = worker_id
        final = dst in TERMINAL  # the webhook outbox: the payload says where to, if at all
        row = _update_task(conn, where, vals, tuple(returning) if returning else
                           _FINAL_COLUMNS if final else (T.c.id,))
        if row is None:
            if worker_id is not None:
                raise LeaseLost(task_id, worker_id)
            return None
        self._events(conn, [self._ev(task_id, event, now, src, dst, worker_id, detail)])
        if final:
            self._announce(conn, row, now)
        return row

    def _held(self, conn: Connection, task_id: str, worker_id: str) -> Row[Any]:
        """The task's row, locked on PostgreSQL; ``LeaseLost`` unless this worker holds it."""
        row = self._locked(conn, task_id)
        if row.status != PROCESSING or row.lease_owner != worker_id:
            raise LeaseLost(task_id, worker_id)
        return row

    def _announce(self, conn: Connection, row: Row[Any], now: datetime) -> None:
        """What a final status change tells webhook receivers, in its own transaction:
        nothing here; ``db.outbox.Outbox`` writes the deliveries."""


"""The durable task queue: the only code that writes ``tasks.status``.

Each public method is one named transition in one transaction, with its
``task_events`` row written in that same transaction.  Every method takes ``now``
(an aware UTC datetime) so tests move the clock without sleeping; it defaults to
the real clock.  Every write a worker makes after its claim is guarded by
``status = 'processing' AND lease_owner = :me``; a guard that matches no row raises
``LeaseLost`` instead of overwriting someone else's task.

On SQLite every write transaction begins ``BEGIN IMMEDIATE`` (see ``db.engine``), so
a read-then-write inside one method is serialized with every other writer.  On
PostgreSQL the same reads take ``FOR UPDATE`` row locks, and the claim skips rows
another worker has locked (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Column, Row, Select, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import configure_mappers
from sqlalchemy.sql.elements import ClauseElement

from db.engine import hot, transactor
from db.errors import (
    IdempotencyConflict,
    IdempotencyMismatch,
    InvalidTransition,
    LeaseLost,
    QueueFull,
    TaskNotFound,
    TransitionNotAllowed,
)
from db.models import (
    TERMINAL,
    TRANSITIONS,
    DeliveryStatus,
    EventType,
    Segment,
    Stage,
    Task,
    TaskEvent,
    TaskStage,
    TaskStatus,
    WebhookDelivery,
    Worker,
)
from db.values import Enqueued, LeaseBeat, NewTask, SegmentRow, TaskError, request_of

T = Task.__table__
E = TaskEvent.__table__
S = TaskStage.__table__
SEG = Segment.__table__
W = Worker.__table__
D = WebhookDelivery.__table__

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
    backoff_cap_seconds: float = 600.0
    queue_full_retry_after: int = 30
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
_INSERT_DELIVERY = hot(insert(D))
MAX_BATCH_BODY = 500  # tasks listed in a batch.finished message


def _origin(url: str) -> str:
    """scheme://host[:port] of a receiver: what events show (a path or query may carry
    the receiver's own secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _task_body(row: Row[Any]) -> dict[str, Any]:
    """A task as a webhook message carries it."""
    payload = row.payload or {}
    upload = payload.get("upload") or {}
    return {"task_id": row.id, "kind": str(row.kind), "status": str(row.status),
            "title": row.title, "source": payload.get("video_url") or upload.get("filename"),
            "batch_id": row.batch_id, "attempts": row.attempts, "error": row.error,
            "created_at": row.created_at.isoformat(),
            "completed_at": row.completed_at.isoformat() if row.completed_at else None,
            "result_url": f"/api/v1/download/{row.id}"}
_COUNT_PENDING = hot(select(func.count()).select_from(T).where(T.c.status == PENDING))
_BY_KEY = hot(select(T).where(T.c.idempotency_key == bindparam("key")))


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


class Queue:
    def __init__(self, engine: AsyncEngine, config: QueueConfig | None = None) -> None:
        self.engine = engine
        self.config = config or QueueConfig()
        self._pg = engine.dialect.name == "postgresql"
        # Every method below is one transaction: a plain function of a sync Connection,
        # run whole by the engine's transactor (db.engine).
        self._tx = transactor(engine)

    @classmethod
    def from_settings(cls, engine: AsyncEngine, settings: Any) -> Queue:
        return cls(engine, QueueConfig(
            lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts,
            max_pending=settings.max_pending,
            backoff_base_seconds=settings.retry_backoff_seconds,
            webhook_url=settings.webhook_url,
            webhook_max_attempts=settings.webhook_max_attempts,
            webhook_backoff_seconds=settings.webhook_retry_seconds))

    # ------------------------------------------------------------------ helpers
    def _lease(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.config.lease_seconds)

    def backoff(self, attempts: int, base: float | None = None) -> timedelta:
        """Exponential backoff with equal jitter: half fixed, half random."""
        c = self.config
        base = c.backoff_base_seconds if base is None else base
        delay = min(c.backoff_cap_seconds, base * 2 ** max(0, attempts - 1))
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
            self._outbox(conn, row, now)
        return row

    # ------------------------------------------------------------------ webhook outbox
    def _outbox(self, conn: Connection, row: Row[Any], now: datetime) -> None:
        """Queue the webhook messages a task's final status calls for, in the status
        change's own transaction: one to ``TINGJI_WEBHOOK_URL`` and one to the task's
        ``callback_url``, and, when it was the last live task of its batch, the batch's
        summary to the same receivers."""
        options = (row.payload or {}).get("options") or {}
        urls = list(dict.fromkeys(u for u in (self.config.webhook_url,
                                              options.get("callback_url")) if u))
        if not urls:
            return
        if len(row) != len(T.c):  # the message carries the whole task
            row = conn.execute(select(T).where(T.c.id == row.id)).one()
        rows = [self._delivery(row, f"task.{row.status}", url, {"task": _task_body(row)}, now)
                for url in urls]
        if row.batch_id:
            batch = self._batch_summary(conn, row.batch_id)
            if batch is not None:
                rows += [self._delivery(row, "batch.finished", url, {"batch": batch}, now)
                         for url in urls]
        conn.execute(_INSERT_DELIVERY, rows)

    @staticmethod
    def _delivery(row: Row[Any], event: str, url: str, body: dict[str, Any],
                  now: datetime) -> dict[str, Any]:
        delivery_id = str(uuid.uuid4())
        return {"id": delivery_id, "task_id": row.id, "batch_id": row.batch_id,
                "event": event, "url": url,
                "body": {"event": event, "delivery_id": delivery_id,
                         "occurred_at": now.isoformat(), **body},
                "status": DeliveryStatus.PENDING, "attempts": 0, "next_attempt_at": now,
                "lease_owner": None, "lease_expires_at": None, "last_error": None,
                "created_at": now, "delivered_at": None}

    def _batch_summary(self, conn: Connection, batch_id: str) -> dict[str, Any] | None:
        """The batch's summary if none of its tasks is live any more, else None."""
        if self._pg:  # two last tasks finishing at once: one of them must see the other
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(batch_id))))
        tasks = conn.execute(
            select(T.c.id, T.c.status, T.c.title).where(T.c.batch_id == batch_id)
            .order_by(T.c.created_at, T.c.id)).all()
        if any(TaskStatus(t.status) not in TERMINAL for t in tasks):
            return None
        counts = {str(s): sum(1 for t in tasks if t.status == s) for s in TERMINAL}
        return {"batch_id": batch_id, "total": len(tasks), **counts,
                "tasks": [{"task_id": t.id, "status": str(t.status), "title": t.title}
                          for t in tasks[:MAX_BATCH_BODY]]}

    async def claim_deliveries(self, owner: str, *, limit: int = 8, lease_seconds: float = 60,
                               now: datetime | None = None) -> list[Row[Any]]:
        """Lease up to ``limit`` due webhook deliveries for one dispatcher."""
        now = now or utcnow()
        due = (select(D.c.id)
               .where(D.c.status == DeliveryStatus.PENDING, D.c.next_attempt_at <= now,
                      (D.c.lease_expires_at.is_(None)) | (D.c.lease_expires_at < now))
               .order_by(D.c.next_attempt_at, D.c.id).limit(limit))
        due_cte = self._lock(due, skip_locked=True).cte("due").prefix_with(
            "MATERIALIZED", dialect="postgresql")
        stmt = (update(D).where(D.c.id.in_(select(due_cte.c.id)))
                .values(lease_owner=owner,
                        lease_expires_at=now + timedelta(seconds=lease_seconds))
                .returning(*D.c))
        return await self._tx(lambda conn: conn.execute(stmt).all())

    async def delivery_result(self, delivery: Row[Any], owner: str, *, ok: bool,
                              detail: str, permanent: bool = False,
                              now: datetime | None = None) -> DeliveryStatus | None:
        """Record one attempt: delivered, retried later with backoff, or failed for good
        (attempts used up, or ``permanent``).  Each outcome is an event of the task.
        None when the lease was lost (another dispatcher owns the delivery now)."""
        now = now or utcnow()
        attempt = delivery.attempts + 1
        detail_of = {"delivery_id": delivery.id, "webhook": delivery.event,
                     "receiver": _origin(delivery.url), "attempt": attempt}
        values: dict[str, Any] = {"attempts": attempt, "lease_owner": None,
                                  "lease_expires_at": None}
        if ok:
            status, event = DeliveryStatus.DELIVERED, EventType.WEBHOOK_DELIVERED
            values |= {"status": status, "delivered_at": now, "last_error": None}
            detail_of["response"] = detail
        elif permanent or attempt >= self.config.webhook_max_attempts:
            status, event = DeliveryStatus.FAILED, EventType.WEBHOOK_FAILED
            values |= {"status": status, "last_error": detail}
            detail_of["error"] = detail
        else:
            status, event = DeliveryStatus.PENDING, EventType.WEBHOOK_RETRY
            when = now + self.backoff(attempt, self.config.webhook_backoff_seconds)
            values |= {"next_attempt_at": when, "last_error": detail}
            detail_of |= {"error": detail, "next_attempt_at": when.isoformat()}

        def tx(conn: Connection) -> DeliveryStatus | None:
            done = conn.execute(update(D).where(
                D.c.id == delivery.id, D.c.lease_owner == owner,
                D.c.status == DeliveryStatus.PENDING).values(**values).returning(D.c.id)).first()
            if done is None:
                return None
            self._events(conn, [self._ev(delivery.task_id, event, now, detail=detail_of)])
            return status

        return await self._tx(tx)

    # ------------------------------------------------------------------ enqueue
    def _new_row(self, item: NewTask, now: datetime, batch_id: str | None) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()), "kind": item.kind, "status": PENDING, "stage": None,
            "progress": 0.0, "message": None, "title": None, "priority": item.priority,
            "payload": item.payload, "result": None, "error": None, "attempts": 0,
            "max_attempts": item.max_attempts or self.config.max_attempts,
            "run_after": now, "lease_owner": None, "lease_expires_at": None,
            "cancel_requested": False, "idempotency_key": item.idempotency_key,
            "batch_id": batch_id, "created_at": now, "started_at": None,
            "completed_at": None, "updated_at": now,
        }

    def _capacity(self, conn: Connection, adding: int) -> None:
        pending = conn.execute(_COUNT_PENDING).scalar_one()
        if pending + adding > self.config.max_pending:
            raise QueueFull(pending, self.config.max_pending, self.config.queue_full_retry_after)

    def _by_key(self, conn: Connection, item: NewTask) -> Row[Any] | None:
        """The task ``item``'s idempotency key names (any status); ``IdempotencyMismatch``
        when that task was made from a different request."""
        if not item.idempotency_key:
            return None
        row = conn.execute(_BY_KEY, {"key": item.idempotency_key}).first()
        if row is not None and request_of(row.payload) != request_of(item.payload):
            raise IdempotencyMismatch(item.idempotency_key, row.id)
        return row

    async def enqueue(self, item: NewTask, *, batch_id: str | None = None,
                      now: datetime | None = None) -> Enqueued:
        """Insert one pending task.  An idempotency key names one task for as long as it
        exists: the same key returns that task (whatever its status), or raises
        ``IdempotencyMismatch`` if it was made from a different request."""
        now = now or utcnow()

        def tx(conn: Connection) -> Enqueued:
            existing = self._by_key(conn, item)
            if existing is not None:
                return Enqueued(_task(existing), created=False)
            self._capacity(conn, 1)
            row = self._new_row(item, now, batch_id)
            conn.execute(_INSERT_TASK, [row])
            self._events(conn, [self._ev(row["id"], EventType.ENQUEUED, now, None, PENDING)])
            return Enqueued(Task(**row), created=True)

        for _ in range(2):
            try:
                return await self._tx(tx)
            except IntegrityError:
                # PostgreSQL: a concurrent enqueue with the same key won the race.
                if not item.idempotency_key:
                    raise
        raise IdempotencyConflict(item.idempotency_key or "")

    async def enqueue_many(self, items: Sequence[NewTask], *, batch_id: str | None = None,
                           now: datetime | None = None) -> tuple[str, list[Task], bool]:
        """Insert several tasks as one batch, all or nothing; returns (batch id, tasks,
        created).  When every item's key names an existing task made from the same
        request, that batch is returned (created False); when only some do, or one was
        made from another request, ``IdempotencyMismatch``."""
        now = now or utcnow()
        batch_id = batch_id or str(uuid.uuid4())
        rows = [self._new_row(item, now, batch_id) for item in items]

        def tx(conn: Connection) -> tuple[str, list[Task], bool]:
            existing = [self._by_key(conn, item) for item in items]
            if any(e is not None for e in existing):
                missing = next((i for i, e in zip(items, existing, strict=True)
                                if e is None), None)
                if missing is not None:
                    first = next(e for e in existing if e is not None)
                    raise IdempotencyMismatch(missing.idempotency_key or "", first.id)
                found = [_task(e) for e in existing if e is not None]
                return found[0].batch_id or batch_id, found, False
            self._capacity(conn, len(rows))
            conn.execute(_INSERT_TASK, rows)
            self._events(conn, [
                self._ev(r["id"], EventType.ENQUEUED, now, None, PENDING,
                         detail={"batch_id": batch_id}) for r in rows])
            return batch_id, [Task(**r) for r in rows], True

        try:
            return await self._tx(tx)
        except IntegrityError:
            keys = ", ".join(i.idempotency_key for i in items if i.idempotency_key)
            raise IdempotencyConflict(keys or "(none)") from None

    # ------------------------------------------------------------------ worker side
    async def claim_next(self, worker_id: str, *, n: int = 1,
                         now: datetime | None = None) -> list[Task]:
        """Atomically lease up to ``n`` ready tasks, highest priority first, oldest first."""
        now = now or utcnow()
        _check(PENDING, PROCESSING)
        stmt = _prepared(("claim", n, self._pg), lambda: self._claim_statement(n))
        params = {"c_now": now, "c_lease": self._lease(now), "c_worker": worker_id}

        def tx(conn: Connection) -> list[Row[Any]]:
            rows = conn.execute(stmt, params).all()
            self._events(conn, [
                self._ev(r.id, EventType.CLAIMED, now, PENDING, PROCESSING, worker_id,
                         {"attempt": r.attempts}) for r in rows])
            return rows

        tasks = [_task(r) for r in await self._tx(tx)]
        tasks.sort(key=lambda t: (-t.priority, t.created_at, t.id))
        return tasks

    def _claim_statement(self, n: int) -> Any:
        when = T.c.updated_at.type
        ready = (select(T.c.id)
                 .where(T.c.status == PENDING, T.c.run_after <= bindparam("c_now", type_=when))
                 .order_by(T.c.priority.desc(), T.c.created_at, T.c.id)
                 .limit(n))
        ready = self._lock(ready, skip_locked=True)
        # A materialized CTE: PostgreSQL may otherwise re-run a LIMITed SKIP LOCKED
        # sub-select per outer row and lease more than n tasks.
        ready_cte = ready.cte("ready").prefix_with("MATERIALIZED", dialect="postgresql")
        return (update(T)
                .where(T.c.id.in_(select(ready_cte.c.id)), T.c.status == PENDING)
                .values(status=PROCESSING, lease_owner=bindparam("c_worker"),
                        lease_expires_at=bindparam("c_lease", type_=when),
                        attempts=T.c.attempts + 1,
                        started_at=func.coalesce(T.c.started_at,
                                                 bindparam("c_now", type_=when)),
                        updated_at=bindparam("c_now", type_=when), message=None)
                .returning(*T.c))

    async def heartbeat(self, task_id: str, worker_id: str, *, progress: float | None = None,
                        message: str | None = None, now: datetime | None = None) -> bool:
        """Extend the lease (and record progress); returns whether cancel was requested."""
        now = now or utcnow()
        values: dict[str, Any] = {"lease_expires_at": self._lease(now), "updated_at": now}
        if progress is not None:
            values["progress"] = min(1.0, max(0.0, progress))
        if message is not None:
            values["message"] = message
        row = await self._tx(self._owned, task_id, worker_id, values, [T.c.cancel_requested])
        return bool(row.cancel_requested)

    async def beat(self, worker_id: str, leases: Sequence[LeaseBeat], *,
                   current_task_id: str | None = None, now: datetime | None = None
                   ) -> tuple[set[str], set[str]]:
        """A worker's whole heartbeat in one transaction: its registry row, and the lease
        and progress of every task it holds.  Returns the ids whose cancellation was
        requested and the ids it no longer holds (``LeaseLost`` for those)."""
        now = now or utcnow()

        def tx(conn: Connection) -> tuple[set[str], set[str]]:
            cancel: set[str] = set()
            lost: set[str] = set()
            conn.execute(update(W).where(W.c.id == worker_id)
                         .values(heartbeat_at=now, current_task_id=current_task_id))
            for lease in leases:
                values: dict[str, Any] = {"lease_expires_at": self._lease(now),
                                          "updated_at": now}
                if lease.progress is not None:
                    values["progress"] = min(1.0, max(0.0, lease.progress))
                if lease.message is not None:
                    values["message"] = lease.message
                try:
                    row = self._owned(conn, lease.task_id, worker_id, values,
                                            [T.c.cancel_requested])
                except LeaseLost:
                    lost.add(lease.task_id)
                    continue
                if row.cancel_requested:
                    cancel.add(lease.task_id)
            return cancel, lost

        return await self._tx(tx)

    async def stage_started(self, task_id: str, worker_id: str, stage: Stage, *,
                            message: str | None = None, now: datetime | None = None) -> bool:
        """Record that ``stage`` began; returns whether cancel was requested."""
        now = now or utcnow()

        def tx(conn: Connection) -> bool:
            row = self._owned(conn, task_id, worker_id, {
                "stage": stage, "progress": 0.0, "message": message, "updated_at": now,
                "lease_expires_at": self._lease(now)}, [T.c.cancel_requested])
            self._events(conn, [self._ev(task_id, EventType.STAGE_STARTED, now,
                                         worker_id=worker_id, detail={"stage": stage.value})])
            return bool(row.cancel_requested)

        return await self._tx(tx)

    async def checkpoint(self, task_id: str, worker_id: str, stage: Stage,
                         output: dict[str, Any], *, seconds: float | None = None,
                         segments: Sequence[SegmentRow] | None = None,
                         title: str | None = None, now: datetime | None = None) -> None:
        """Store a finished stage's output (and transcript segments) before the next
        stage starts, so a retry or a recovery resumes after it."""
        now = now or utcnow()
        values: dict[str, Any] = {"progress": 1.0, "updated_at": now,
                                  "lease_expires_at": self._lease(now)}
        if title is not None:
            values["title"] = title

        def tx(conn: Connection) -> None:
            self._owned(conn, task_id, worker_id, values)
            conn.execute(delete(S).where(S.c.task_id == task_id, S.c.stage == stage))
            conn.execute(insert(S), [{"task_id": task_id, "stage": stage,
                                            "completed_at": now, "seconds": seconds,
                                            "worker_id": worker_id, "output": output}])
            if segments is not None:
                conn.execute(delete(SEG).where(SEG.c.task_id == task_id))
                if segments:
                    conn.execute(insert(SEG), [
                        {"task_id": task_id, "idx": i, "start_ms": s.start_ms,
                         "end_ms": s.end_ms, "text": s.text, "chars": s.chars,
                         "speaker": s.speaker}
                        for i, s in enumerate(segments)])
            detail: dict[str, Any] = {"stage": stage.value}
            if seconds is not None:
                detail["seconds"] = round(seconds, 3)
            self._events(conn, [self._ev(task_id, EventType.STAGE_COMPLETED, now,
                                         worker_id=worker_id, detail=detail)])

        await self._tx(tx)

    async def complete(self, task_id: str, worker_id: str, result: dict[str, Any], *,
                       now: datetime | None = None) -> None:
        now = now or utcnow()
        await self._tx(lambda conn: self._transition(
            conn, task_id, PROCESSING, COMPLETED, EventType.COMPLETED, now,
            worker_id=worker_id, values={"stage": None, "progress": 1.0, "result": result,
                                         "error": None, "message": None,
                                         "cancel_requested": False}))

    async def fail(self, task_id: str, worker_id: str, error: TaskError, *,
                   now: datetime | None = None) -> TaskStatus:
        """Retryable errors go back to pending after a backoff while attempts remain;
        permanent errors (and exhausted retries) fail the task.  Returns the new status."""
        now = now or utcnow()

        def tx(conn: Connection) -> TaskStatus:
            row = self._held(conn, task_id, worker_id)
            if error.retryable and row.attempts < row.max_attempts:
                run_after = now + self.backoff(row.attempts)
                self._transition(
                    conn, task_id, PROCESSING, PENDING, EventType.RETRY_SCHEDULED, now,
                    worker_id=worker_id, values={
                        "error": error.as_dict(), "run_after": run_after,
                        "message": f"retry scheduled: {error.message}"},
                    detail={"error": error.as_dict(), "run_after": run_after.isoformat(),
                            "attempt": row.attempts})
                return PENDING
            self._transition(
                conn, task_id, PROCESSING, FAILED, EventType.FAILED, now, worker_id=worker_id,
                values={"error": error.as_dict(), "message": error.message},
                detail={"error": error.as_dict(), "attempt": row.attempts})
            return FAILED

        return await self._tx(tx)

    async def mark_cancelled(self, task_id: str, worker_id: str, *,
                             now: datetime | None = None) -> None:
        """The worker stopped a task whose cancellation was requested."""
        now = now or utcnow()
        await self._tx(lambda conn: self._transition(
            conn, task_id, PROCESSING, CANCELLED, EventType.CANCELLED, now,
            worker_id=worker_id, values={"message": "cancelled"}))

    async def release(self, task_id: str, worker_id: str, *, reason: str = "worker stopping",
                      count_attempt: bool = False, now: datetime | None = None
                      ) -> TaskStatus:
        """A draining worker hands its task back (or finishes a requested cancel).  A
        graceful stop does not use up one of the task's attempts (only a crash, a lease
        expiry or a failure does) unless ``count_attempt``."""
        now = now or utcnow()

        def tx(conn: Connection) -> TaskStatus:
            row = self._held(conn, task_id, worker_id)
            if row.cancel_requested:
                self._transition(conn, task_id, PROCESSING, CANCELLED,
                                       EventType.CANCELLED, now, worker_id=worker_id,
                                       values={"message": reason}, detail={"reason": reason})
                return CANCELLED
            values: dict[str, Any] = {"message": reason, "run_after": now}
            if not count_attempt:
                values["attempts"] = func.max(T.c.attempts - 1, 0) if not self._pg \
                    else func.greatest(T.c.attempts - 1, 0)
            self._transition(conn, task_id, PROCESSING, PENDING, EventType.RELEASED, now,
                                   worker_id=worker_id, values=values,
                                   detail={"reason": reason, "attempt": row.attempts,
                                           "counted": count_attempt})
            return PENDING

        return await self._tx(tx)

    def _held(self, conn: Connection, task_id: str, worker_id: str) -> Row[Any]:
        """The task's row, locked on PostgreSQL; ``LeaseLost`` unless this worker holds it."""
        row = self._locked(conn, task_id)
        if row.status != PROCESSING or row.lease_owner != worker_id:
            raise LeaseLost(task_id, worker_id)
        return row

    # ------------------------------------------------------------------ rescue
    def _expire(self, conn: Connection, rows: Sequence[Row[Any]], now: datetime,
                reason: str) -> list[tuple[str, TaskStatus]]:
        out: list[tuple[str, TaskStatus]] = []
        for r in rows:
            if r.cancel_requested:
                dst, values = CANCELLED, {"message": "cancelled"}
            elif r.attempts >= r.max_attempts:
                err = TaskError("LeaseExpired", f"the worker stopped responding ({reason}) "
                                f"and all {r.max_attempts} attempts are used", False)
                dst, values = FAILED, {"error": err.as_dict(), "message": err.message}
            else:
                dst, values = PENDING, {"run_after": now, "message": f"requeued: {reason}"}
            self._transition(conn, r.id, PROCESSING, dst, EventType.LEASE_EXPIRED, now,
                                   worker_id=r.lease_owner, values=values,
                                   detail={"reason": reason, "attempt": r.attempts})
            out.append((r.id, dst))
        return out

    async def requeue_expired(self, *, now: datetime | None = None
                              ) -> list[tuple[str, TaskStatus]]:
        """Expired leases go back to pending, or fail once their attempts are used up."""
        now = now or utcnow()
        stmt = self._lock(select(T).where(T.c.status == PROCESSING,
                                          T.c.lease_expires_at < now), skip_locked=True)
        return await self._tx(
            lambda conn: self._expire(conn, conn.execute(stmt).all(), now, "lease expired"))

    async def requeue_dead_workers(self, hostname: str, is_alive: Callable[[int], bool], *,
                                   boot_id: str | None = None, exclude: str | None = None,
                                   now: datetime | None = None
                                   ) -> list[tuple[str, TaskStatus]]:
        """Recover at once the tasks of workers on this host whose process is gone (or
        that ran in a previous boot of it), instead of waiting for their leases to
        expire."""
        now = now or utcnow()

        def tx(conn: Connection) -> list[tuple[str, TaskStatus]]:
            workers = (conn.execute(select(W.c.id, W.c.pid, W.c.boot_id).where(
                W.c.hostname == hostname, W.c.stopped_at.is_(None)))).all()
            dead = [w.id for w in workers if w.id != exclude and (
                (boot_id is not None and w.boot_id is not None and w.boot_id != boot_id)
                or not is_alive(w.pid))]
            if not dead:
                return []
            stmt = self._lock(select(T).where(T.c.status == PROCESSING,
                                              T.c.lease_owner.in_(dead)), skip_locked=True)
            rows = (conn.execute(stmt)).all()
            out = self._expire(conn, rows, now, "worker process gone")
            conn.execute(update(W).where(W.c.id.in_(dead))
                         .values(stopped_at=now, current_task_id=None))
            return out

        return await self._tx(tx)

    # ------------------------------------------------------------------ user side
    async def request_cancel(self, task_id: str, *, now: datetime | None = None) -> Task:
        """Pending -> cancelled at once; processing -> flagged for its worker to stop."""
        now = now or utcnow()

        def tx(conn: Connection) -> Task:
            row = self._locked(conn, task_id)
            status = TaskStatus(row.status)
            if status in TERMINAL:
                raise InvalidTransition(task_id, status, "cancel")
            if status is PROCESSING and row.cancel_requested:
                return _task(row)
            self._events(conn, [self._ev(task_id, EventType.CANCEL_REQUESTED, now,
                                               status, status, row.lease_owner)])
            if status is PENDING:
                new = self._transition(
                    conn, task_id, PENDING, CANCELLED, EventType.CANCELLED, now,
                    values={"cancel_requested": True, "message": "cancelled"}, returning=T.c)
            else:  # not a status change: the worker sees the flag at its next heartbeat
                new = (conn.execute(
                    update(T).where(T.c.id == task_id, T.c.status == PROCESSING)
                    .values(cancel_requested=True, updated_at=now, message="cancel requested")
                    .returning(*T.c))).first()
            if new is None:  # not possible under the row lock / BEGIN IMMEDIATE
                raise InvalidTransition(task_id, status, "cancel")
            return _task(new)

        return await self._tx(tx)

    async def retry(self, task_id: str, *, now: datetime | None = None) -> Task:
        """Failed or cancelled -> pending; the worker resumes at the first unfinished
        stage.  The task gets a fresh allowance of attempts."""
        now = now or utcnow()
        key = ""

        def tx(conn: Connection) -> Task:
            nonlocal key
            row = self._locked(conn, task_id)
            key = row.idempotency_key or ""
            status = TaskStatus(row.status)
            if status not in (FAILED, CANCELLED):
                raise InvalidTransition(task_id, status, "retry")
            new = self._transition(
                conn, task_id, status, PENDING, EventType.RETRIED, now, values={
                    "error": None, "cancel_requested": False, "run_after": now,
                    "completed_at": None, "stage": None, "progress": 0.0,
                    "message": "retry requested",
                    "max_attempts": row.attempts + self.config.max_attempts},
                returning=T.c)
            if new is None:
                raise InvalidTransition(task_id, status, "retry")
            return _task(new)

        try:
            return await self._tx(tx)
        except IntegrityError:
            raise IdempotencyConflict(key) from None

    async def name_speakers(self, task_id: str, names: dict[str, str], *,
                            now: datetime | None = None) -> Task:
        """Names for a completed task's speaker labels (``{"S1": "张老师"}``), merged into
        its result; downloads render them.  Not a status change: an event records it."""
        now = now or utcnow()

        def tx(conn: Connection) -> Task:
            row = self._locked(conn, task_id)
            if row.status != COMPLETED:
                raise InvalidTransition(task_id, TaskStatus(row.status), "name speakers")
            result = dict(row.result or {})
            result["speaker_names"] = {**(result.get("speaker_names") or {}), **names}
            new = conn.execute(update(T).where(T.c.id == task_id)
                               .values(result=result, updated_at=now).returning(*T.c)).one()
            self._events(conn, [self._ev(task_id, EventType.SPEAKERS_NAMED, now,
                                         detail={"names": names})])
            return _task(new)

        return await self._tx(tx)

    async def prune(self, older_than: timedelta, *, now: datetime | None = None
                    ) -> list[tuple[str, dict[str, Any]]]:
        """Delete terminal tasks finished before ``now - older_than`` (with their events,
        checkpoints and segments); returns their ids and payloads so callers can remove
        their files."""
        now = now or utcnow()
        stmt = (delete(T).where(T.c.status.in_(list(TERMINAL)),
                                T.c.completed_at < now - older_than)
                .returning(T.c.id, T.c.payload))
        rows = await self._tx(lambda conn: conn.execute(stmt).all())
        return [(r.id, r.payload) for r in rows]

    # ------------------------------------------------------------------ worker registry
    async def register(self, worker_id: str, hostname: str, pid: int, *,
                       boot_id: str | None = None, model: str | None = None,
                       now: datetime | None = None) -> None:
        now = now or utcnow()
        row = {"id": worker_id, "hostname": hostname, "pid": pid, "boot_id": boot_id,
               "started_at": now, "heartbeat_at": now, "stopped_at": None, "model": model,
               "model_loaded_at": None, "model_loads": 0, "current_task_id": None}
        await self._tx(lambda conn: conn.execute(insert(W), [row]))

    async def worker_heartbeat(self, worker_id: str, *, current_task_id: str | None = None,
                               now: datetime | None = None) -> None:
        now = now or utcnow()
        stmt = (update(W).where(W.c.id == worker_id)
                .values(heartbeat_at=now, current_task_id=current_task_id))
        await self._tx(lambda conn: conn.execute(stmt))

    async def record_model_load(self, worker_id: str, model: str, *,
                                now: datetime | None = None) -> int:
        now = now or utcnow()
        stmt = (update(W).where(W.c.id == worker_id)
                .values(model=model, model_loaded_at=now, model_loads=W.c.model_loads + 1,
                        heartbeat_at=now)
                .returning(W.c.model_loads))
        row = await self._tx(lambda conn: conn.execute(stmt).one())
        return int(row.model_loads)

    async def stop(self, worker_id: str, *, now: datetime | None = None) -> None:
        now = now or utcnow()
        stmt = (update(W).where(W.c.id == worker_id)
                .values(stopped_at=now, heartbeat_at=now, current_task_id=None))
        await self._tx(lambda conn: conn.execute(stmt))


__all__ = ["Enqueued", "LeaseBeat", "NewTask", "Queue", "QueueConfig", "SegmentRow", "TaskError",
           "utcnow"]

"""The user's side of the queue: submitting tasks (one, or a batch all or nothing, with
idempotency keys), cancelling, retrying, naming speakers and pruning old tasks."""


import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, bindparam, delete, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from db.engine import hot
from db.errors import (
    BatchClosed,
    IdempotencyConflict,
    IdempotencyMismatch,
    InvalidTransition,
    QueueFull,
)
from db.models import (
    TERMINAL,
    EventType,
    Task,
    TaskStatus,
)
from db.transitions import (
    _INSERT_TASK,
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    PROCESSING,
    D,
    T,
    Transitions,
    _task,
    utcnow,
)
from db.values import Enqueued, NewTask, request_of

MAX_BATCH_TASKS = 1000  # tasks in one batch (a list task adds at most TINGJI_MAX_LIST_ITEMS)
_COUNT_PENDING = hot(select(func.count()).select_from(T).where(T.c.status == PENDING))
_BY_KEY = hot(select(T).where(T.c.idempotency_key == bindparam("key")))


class Submissions(Transitions):
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

    def _joinable(self, conn: Connection, batch_id: str, adding: int) -> None:
        """A batch takes at most ``MAX_BATCH_TASKS``, and nothing once its end was
        announced (``batch.finished`` is sent once: a task added later would never be
        in one)."""
        count = conn.execute(select(func.count()).select_from(T)
                             .where(T.c.batch_id == batch_id)).scalar_one()
        if count + adding > MAX_BATCH_TASKS:
            raise BatchClosed(batch_id, f"a batch holds at most {MAX_BATCH_TASKS} tasks")
        if count and conn.execute(select(D.c.id).where(
                D.c.batch_id == batch_id, D.c.event == "batch.finished").limit(1)).first():
            raise BatchClosed(batch_id, "it finished, and its end was announced")

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
            if batch_id is not None:
                self._joinable(conn, batch_id, 1)
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
        joining = batch_id is not None
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
            if joining:
                self._joinable(conn, batch_id, len(rows))
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

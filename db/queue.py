"""The durable task queue: the only code that writes ``tasks.status``.

``Queue`` is the one object the API and the worker hold.  This module is the worker's
side (claiming, lease beats, stage checkpoints, outcomes, and the rescue of expired
leases and dead workers); the user's side is ``db.submissions``, webhook deliveries
``db.outbox``, the worker registry ``db.workers``, and the guarded helpers they are
all built of ``db.transitions``, whose docstring states the rules they keep.  Every
write a worker makes after its claim is guarded by ``status = 'processing' AND
lease_owner = :me``; a guard that matches no row raises ``LeaseLost`` instead of
overwriting someone else's task.
"""


import contextlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from db.errors import (
    LeaseLost,
)
from db.models import (
    DeliveryStatus,
    EventType,
    Stage,
    Task,
    TaskStatus,
)
from db.outbox import Outbox
from db.submissions import Submissions
from db.transitions import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    PROCESSING,
    SEG,
    TP,
    TPC,
    D,
    QueueConfig,
    S,
    T,
    W,
    _check,
    _prepared,
    _task,
    utcnow,
)
from db.values import Enqueued, LeaseBeat, NewTask, SegmentRow, TaskError
from db.workers import WorkerRegistry


class Queue(Outbox, Submissions, WorkerRegistry):
    async def claim_next(self, worker_id: str, *, n: int = 1,
                         now: datetime | None = None) -> list[Task]:
        """Atomically lease up to ``n`` ready tasks, highest priority first, oldest first.
        The lease counts from when the transaction holds the write lock (as a heartbeat's
        does): a claim that waited out another program's lock gets its whole lease."""
        _check(PENDING, PROCESSING)
        stmt = _prepared(("claim", n, self._pg), lambda: self._claim_statement(n))

        def tx(conn: Connection) -> list[Row[Any]]:
            at = now or utcnow()
            params = {"c_now": at, "c_lease": self._lease(at), "c_worker": worker_id}
            rows = conn.execute(stmt, params).all()
            self._events(conn, [
                self._ev(r.id, EventType.CLAIMED, at, PENDING, PROCESSING, worker_id,
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

    async def beat(self, worker_id: str, leases: Sequence[LeaseBeat], *,
                   current_task_id: str | None = None, now: datetime | None = None
                   ) -> tuple[set[str], set[str]]:
        """A worker's whole heartbeat in one transaction: its registry row, and the lease
        and progress of every task it holds.  Returns the ids whose cancellation was
        requested and the ids it no longer holds (``LeaseLost`` for those).  The leases
        count from when the transaction holds the write lock, not from the call: a beat
        that waited out another program's lock (SQLite's busy timeout is longer than a
        short lease) must not write a lease that has already run out."""

        def tx(conn: Connection) -> tuple[set[str], set[str]]:
            at = now or utcnow()
            cancel: set[str] = set()
            lost: set[str] = set()
            conn.execute(update(W).where(W.c.id == worker_id)
                         .values(heartbeat_at=at, current_task_id=current_task_id))
            for lease in leases:
                values: dict[str, Any] = {"lease_expires_at": self._lease(at),
                                          "updated_at": at}
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
                            message: str | None = None, progress: float = 0.0,
                            now: datetime | None = None) -> bool:
        """Record that ``stage`` began (``progress``: how much of it an earlier run
        already did); returns whether cancel was requested."""

        def tx(conn: Connection) -> bool:
            at = now or utcnow()  # once the write lock is held
            row = self._owned(conn, task_id, worker_id, {
                "stage": stage, "progress": progress, "message": message, "updated_at": at,
                "lease_expires_at": self._lease(at)}, [T.c.cancel_requested])
            self._events(conn, [self._ev(task_id, EventType.STAGE_STARTED, at,
                                         worker_id=worker_id, detail={"stage": stage.value})])
            return bool(row.cancel_requested)

        return await self._tx(tx)

    async def checkpoint(self, task_id: str, worker_id: str, stage: Stage,
                         output: dict[str, Any], *, seconds: float | None = None,
                         segments: Sequence[SegmentRow] | None = None,
                         title: str | None = None, transcript_key: str | None = None,
                         now: datetime | None = None) -> None:
        """Store a finished stage's output (and transcript segments, and what identifies
        the transcript) before the next stage starts, so a retry or a recovery resumes
        after it."""

        def tx(conn: Connection) -> None:
            at = now or utcnow()  # once the write lock is held
            values: dict[str, Any] = {"progress": 1.0, "updated_at": at,
                                      "lease_expires_at": self._lease(at)}
            if title is not None:
                values["title"] = title
            if transcript_key is not None:
                values["transcript_key"] = transcript_key
            self._owned(conn, task_id, worker_id, values)
            conn.execute(delete(S).where(S.c.task_id == task_id, S.c.stage == stage))
            conn.execute(insert(S), [{"task_id": task_id, "stage": stage,
                                      "completed_at": at, "seconds": seconds,
                                      "worker_id": worker_id, "output": output}])
            if stage in (Stage.FETCH, Stage.TRANSCRIBE):  # done, or other audio now
                conn.execute(delete(TPC).where(TPC.c.task_id == task_id))
                conn.execute(delete(TP).where(TP.c.task_id == task_id))
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
            self._events(conn, [self._ev(task_id, EventType.STAGE_COMPLETED, at,
                                         worker_id=worker_id, detail=detail)])

        await self._tx(tx)

    async def save_transcription(self, task_id: str, worker_id: str, *, key: str,
                                 vad: list[dict[str, Any]], pieces: int, speech_s: float,
                                 decoded: Sequence[tuple[int, float, dict[str, Any]]],
                                 now: datetime | None = None) -> None:
        """Keep a transcription's newly decoded pieces (``decoded``: index, seconds,
        result) while it runs: a worker that takes the task over after a crash decodes
        only the others.  Written only while this worker holds the task; a partial made
        by another decoding (``key``) is replaced.  Saving a piece again is harmless."""

        def tx(conn: Connection) -> None:
            at = now or utcnow()  # once the write lock is held
            self._owned(conn, task_id, worker_id, {"updated_at": at,
                                                   "lease_expires_at": self._lease(at)})
            head = conn.execute(select(TP.c.key).where(TP.c.task_id == task_id)).first()
            if head is not None and head.key != key:
                conn.execute(delete(TPC).where(TPC.c.task_id == task_id))
                conn.execute(delete(TP).where(TP.c.task_id == task_id))
                head = None
            if head is None:
                conn.execute(insert(TP), [{"task_id": task_id, "key": key, "vad": vad,
                                           "pieces": pieces, "speech_s": speech_s,
                                           "updated_at": at, "worker_id": worker_id}])
            else:
                conn.execute(update(TP).where(TP.c.task_id == task_id)
                             .values(updated_at=at, worker_id=worker_id))
            if decoded:
                conn.execute(delete(TPC).where(TPC.c.task_id == task_id,
                                               TPC.c.idx.in_([i for i, _, _ in decoded])))
                conn.execute(insert(TPC), [{"task_id": task_id, "idx": i, "seconds": sec,
                                            "result": res} for i, sec, res in decoded])

        await self._tx(tx)

    async def note(self, task_id: str, worker_id: str, event: EventType,
                   detail: dict[str, Any], *, now: datetime | None = None) -> None:
        """An event about a task this worker holds (no change of status)."""
        now = now or utcnow()

        def tx(conn: Connection) -> None:
            self._owned(conn, task_id, worker_id, {"updated_at": now})
            self._events(conn, [self._ev(task_id, event, now, worker_id=worker_id,
                                         detail=detail)])

        await self._tx(tx)

    async def record(self, task_id: str, event: EventType, detail: dict[str, Any], *,
                     worker_id: str | None = None, now: datetime | None = None) -> None:
        """An event about a task, whoever holds it now (no change of status)."""
        now = now or utcnow()
        await self._tx(lambda conn: self._events(conn, [self._ev(
            task_id, event, now, worker_id=worker_id, detail=detail)]))

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
            deferred = self._deferral(row, error, now)
            if deferred is not None:
                err, run_after = deferred
                self._transition(
                    conn, task_id, PROCESSING, PENDING, EventType.RETRY_SCHEDULED, now,
                    worker_id=worker_id, values={
                        "error": err, "run_after": run_after,
                        "attempts": self._uncounted(),
                        "message": f"next try at {run_after:%Y-%m-%d %H:%M:%S} UTC: "
                                   f"{error.message}"},
                    detail={"error": err, "run_after": run_after.isoformat(),
                            "attempt": row.attempts, "counted": False})
                return PENDING
            err_now = error
            if error.deferrable and row.error and row.error.get("since"):
                hours = (self.config.defer_window or timedelta()).total_seconds() / 3600
                err_now = TaskError(error.type, f"{error.message} (tried again for "
                                    f"{hours:g} hours: TINGJI_FETCH_RETRY_HOURS)", False,
                                    error.code)
            if err_now.retryable and row.attempts < row.max_attempts:
                run_after = now + self.backoff(row.attempts)
                self._transition(
                    conn, task_id, PROCESSING, PENDING, EventType.RETRY_SCHEDULED, now,
                    worker_id=worker_id, values={
                        "error": err_now.as_dict(), "run_after": run_after,
                        "message": f"retry scheduled: {err_now.message}"},
                    detail={"error": err_now.as_dict(), "run_after": run_after.isoformat(),
                            "attempt": row.attempts})
                return PENDING
            self._transition(
                conn, task_id, PROCESSING, FAILED, EventType.FAILED, now, worker_id=worker_id,
                values={"error": err_now.as_dict(), "message": err_now.message},
                detail={"error": err_now.as_dict(), "attempt": row.attempts})
            return FAILED

        return await self._tx(tx)

    def _uncounted(self) -> Any:
        """The claim's attempt given back: a hand-back or a deferral uses none."""
        return func.greatest(T.c.attempts - 1, 0) if self._pg \
            else func.max(T.c.attempts - 1, 0)

    def _deferral(self, row: Row[Any], error: TaskError, now: datetime
                  ) -> tuple[dict[str, Any], datetime] | None:
        """A deferrable failure inside its window: the error to keep (with when the
        refusals began and how many there were) and when to try again; else None."""
        window = self.config.defer_window
        if not error.deferrable or window is None:
            return None
        before = row.error or {}
        since = now
        tries = 1
        if before.get("since"):
            with contextlib.suppress(ValueError, TypeError):
                since = datetime.fromisoformat(before["since"])
                tries = int(before.get("tries", 0)) + 1
        if now - since >= window:
            return None
        run_after = now + self.backoff(tries, cap=self.config.defer_cap_seconds)
        return ({**error.as_dict(), "since": since.isoformat(), "tries": tries},
                run_after)

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
                values["attempts"] = self._uncounted()
            self._transition(conn, task_id, PROCESSING, PENDING, EventType.RELEASED, now,
                                   worker_id=worker_id, values=values,
                                   detail={"reason": reason, "attempt": row.attempts,
                                           "counted": count_attempt})
            return PENDING

        return await self._tx(tx)

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
        expire; the webhook deliveries they were sending are due again at once (their
        leases end now: a last attempt fails for good, as when a lease runs out)."""
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
            conn.execute(update(D).where(D.c.lease_owner.in_(dead),
                                         D.c.status == DeliveryStatus.PENDING,
                                         D.c.lease_expires_at > now)
                         .values(lease_expires_at=now))
            return out

        return await self._tx(tx)


__all__ = ["Enqueued", "LeaseBeat", "NewTask", "Queue", "QueueConfig", "SegmentRow", "TaskError",
           "utcnow"]

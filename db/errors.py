"""Domain errors of the task store.  ``server/`` maps each to one HTTP status."""

from __future__ import annotations


class QueueError(Exception):
    """Base of every error the queue raises on purpose."""

    code = "queue_error"


class TaskNotFound(QueueError):
    code = "not_found"

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id} does not exist")


class InvalidTransition(QueueError):
    """The task is in a status from which the asked-for change is not allowed."""

    code = "conflict"

    def __init__(self, task_id: str, status: str, action: str) -> None:
        self.task_id, self.status, self.action = task_id, status, action
        super().__init__(f"cannot {action} task {task_id}: it is {status}")


class TransitionNotAllowed(RuntimeError):
    """A bug: code asked the queue for a status change that ``TRANSITIONS`` does not list
    (a programming error, not a user's request: never mapped to an HTTP status)."""

    def __init__(self, src: str, dst: str) -> None:
        super().__init__(f"transition {src} -> {dst} is not in db.models.TRANSITIONS")


class LeaseLost(QueueError):
    """A worker wrote to a task it no longer holds (lease expired, requeued or cancelled).

    Never silently overwrite: the worker must drop the task."""

    code = "lease_lost"

    def __init__(self, task_id: str, worker_id: str) -> None:
        self.task_id, self.worker_id = task_id, worker_id
        super().__init__(f"task {task_id} is no longer held by worker {worker_id}")


class QueueFull(QueueError):
    code = "queue_full"

    def __init__(self, pending: int, capacity: int, retry_after: int) -> None:
        self.pending, self.capacity, self.retry_after = pending, capacity, retry_after
        super().__init__(f"the queue is full ({pending} pending, capacity {capacity}); "
                         f"retry in {retry_after} s")


class IdempotencyMismatch(QueueError):
    """The key already names a task (or batch) made from a different request."""

    code = "idempotency_key_reused"

    def __init__(self, key: str, task_id: str) -> None:
        self.key, self.task_id = key, task_id
        super().__init__(f"idempotency key {key[:200]!r} already names task {task_id}, which "
                         "was submitted with a different request; use another key")


class BatchClosed(QueueError):
    """The batch cannot take more tasks: it is full, or it ended and said so."""

    code = "batch_closed"

    def __init__(self, batch_id: str, why: str) -> None:
        self.batch_id = batch_id
        super().__init__(f"batch {batch_id} takes no more tasks: {why}; submit them as a "
                         "new batch")


class IdempotencyConflict(QueueError):
    code = "conflict"

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"another live task already uses idempotency key {key!r}")


# what SQLite says when it cannot be used for now, as opposed to refusing a statement
_SQLITE_WAIT = ("database is locked", "database table is locked", "database or disk is full",
                "disk i/o error", "unable to open database file")


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be used for now -- PostgreSQL down,
    restarting or unreachable, SQLite locked past its busy timeout by another program,
    its disk full -- so that waiting heals it, rather than that a statement was refused
    (a constraint, a bad value, a bug)."""
    import sqlite3

    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        if isinstance(orig, sqlite3.Error):
            return unavailable(orig)
        return isinstance(exc, OperationalError | InterfaceError)
    if isinstance(exc, sqlite3.OperationalError):
        return any(w in str(exc).lower() for w in _SQLITE_WAIT)
    # asyncpg's own connection errors, raised before SQLAlchemy wraps anything
    return isinstance(exc, OSError | TimeoutError)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the database's disk is full."""
    import errno

    text = str(exc).lower()
    return "disk is full" in text or "no space left" in text or (
        isinstance(exc, OSError) and exc.errno == errno.ENOSPC)

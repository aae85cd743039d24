"""How a task's run ended, as the worker records it (``Worker._record``): the one
outcome a run gets, and what a stopped run becomes."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.errors import unavailable
from db.values import TaskError
from worker.context import StopReason
from worker.errors import disk_full, out_of_space

log = logging.getLogger("tingji.worker")


class Outcome(enum.Enum):
    """How a run ended, as recorded (or not) in the queue."""

    COMPLETED = "completed"
    FAILED = "failed"  # failed for good
    RETRY = "will be retried"  # a retryable failure went back to pending
    CANCEL = "cancelled"
    SHUTDOWN = "handed back"  # released to pending: the worker is stopping
    LOST = "lost"  # the lease was taken away: nothing to write
    ABANDONED = "abandoned"  # nothing could be written: the lease will expire


# how a stopped run ends (a timeout fails its stage, retryably, before it gets here)
STOPPED = {StopReason.CANCEL: Outcome.CANCEL, StopReason.SHUTDOWN: Outcome.SHUTDOWN,
           StopReason.LOST: Outcome.LOST, StopReason.TIMEOUT: Outcome.SHUTDOWN}


@dataclass(frozen=True, slots=True)
class Ended:
    outcome: Outcome
    error: TaskError | None = None
    result: dict[str, Any] | None = None
    reason: str = "worker stopping"
    count_attempt: bool = False  # a hand-back that uses up an attempt (not a graceful stop)


def crashed(task_id: str, exc: Exception, data_dir: Path) -> Ended:
    """What an exception no stage named becomes: a full disk is tried again later
    without using an attempt; a database that stayed away past the run's patience hands
    the task back (its work is checkpointed); anything else is a bug, failed visibly and
    retried."""
    if out_of_space(exc):
        full = disk_full(data_dir)
        return Ended(Outcome.FAILED, TaskError(full.type, full.message, True, full.code, True))
    if unavailable(exc):
        log.warning("task %s: the database stayed unavailable: %s", task_id, exc)
        return Ended(Outcome.SHUTDOWN, reason="the database was unavailable")
    log.exception("task %s crashed", task_id)
    return Ended(Outcome.FAILED, TaskError(
        "InternalError", f"internal error: {type(exc).__name__}: {str(exc)[:300]}", True))


__all__ = ["STOPPED", "Ended", "Outcome", "crashed"]

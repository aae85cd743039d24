"""How a task's run ended, as the worker records it (``Worker._record``): the one
outcome a run gets, and what a stopped run becomes."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from db.values import TaskError
from worker.context import StopReason


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


__all__ = ["STOPPED", "Ended", "Outcome"]

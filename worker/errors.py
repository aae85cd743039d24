"""How a pipeline step says what went wrong.  The worker turns these into
``db.queue.TaskError`` rows: permanent ones fail the task at once, retryable ones go
back to the queue with backoff.  Messages are for users: no tracebacks."""

from __future__ import annotations


class TaskFailure(Exception):
    retryable = True
    type = "Error"

    def __init__(self, message: str, *, type: str | None = None) -> None:  # noqa: A002
        super().__init__(message)
        self.message = message
        if type:
            self.type = type


class PermanentTaskError(TaskFailure):
    """Bad input: retrying cannot help (no audio stream, 404, unsupported URL)."""

    retryable = False
    type = "BadInput"


class RetryableTaskError(TaskFailure):
    """Transient trouble: network, LLM provider, timeouts."""

    retryable = True
    type = "Transient"


class TaskCancelled(Exception):
    """The user cancelled the task; the worker stops it at the next check."""

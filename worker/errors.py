"""How a pipeline step says what went wrong.  The worker turns these into
``db.queue.TaskError`` rows: permanent ones fail the task at once, retryable ones go
back to the queue with backoff.  Messages are for users: no tracebacks."""

from __future__ import annotations

from pathlib import Path


class TaskFailure(Exception):
    retryable = True
    type = "Error"
    # a fetch failure's stable class (``error.code``): rate_limited, network, not_found,
    # login_required, geo_blocked, unsupported_url, too_large, ... (``worker.stages.fetch``)
    code: str | None = None

    def __init__(self, message: str, *, type: str | None = None,  # noqa: A002
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if type:
            self.type = type
        if code:
            self.code = code

    @property
    def deferrable(self) -> bool:
        """A refusal that heals by itself: tried again later, for up to
        ``TINGJI_FETCH_RETRY_HOURS``, without using up the task's attempts."""
        return self.retryable and self.code in TRANSIENT_CODES


class PermanentTaskError(TaskFailure):
    """Bad input: retrying cannot help (no audio stream, 404, unsupported URL)."""

    retryable = False
    type = "BadInput"


class RetryableTaskError(TaskFailure):
    """Transient trouble: network, LLM provider, timeouts."""

    retryable = True
    type = "Transient"


# the fetch refusals that heal with time (the site's rate limit, the network)
TRANSIENT_CODES = frozenset({"rate_limited", "network"})


class TaskCancelled(Exception):
    """The user cancelled the task; the worker stops it at the next check."""


def load_failure(what: str, source: str, setting: str, exc: BaseException) -> str:
    """One line for a model funasr could not load; for a hub id, what to do offline."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    hint = ""
    if source.startswith(("/", ".", "~")) and not Path(source).expanduser().exists():
        hint = f" ({source} does not exist; point {setting} at a model folder or a hub id)"
    elif not Path(source).expanduser().exists():
        hint = (" (a hub id needs network access to download the model once; "
                f"set {setting} to a local model folder otherwise)")
    return f"cannot load {what}: {type(exc).__name__}: {first}{hint}"


# permanent failures that say an upload is not media: kept for a retry, it would only
# sit in uploads/ (and be served to workers by the internal route)
NOT_MEDIA = frozenset({"UnsupportedMedia", "UndecodableMedia", "NoAudio"})

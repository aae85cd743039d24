"""How a pipeline step says what went wrong.  The worker turns these into
``db.queue.TaskError`` rows: permanent ones fail the task at once, retryable ones go
back to the queue with backoff.  Messages are for users: no tracebacks."""

from __future__ import annotations

from pathlib import Path


class TaskFailure(Exception):
    retryable = True
    type = "Error"
    # a fetch failure's stable class (``error.code``): rate_limited, network, not_found,
    # login_required, geo_blocked, unsupported_url, too_large, ... (``worker.stages.refusals``)
    # and disk_full
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


# the failures that heal with time: the site's rate limit, the network, a full disk
# (once someone frees space)
TRANSIENT_CODES = frozenset({"rate_limited", "network", "disk_full"})


def out_of_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) says the disk is full (ENOSPC)."""
    import errno

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "no space left on device" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def disk_full(folder: Path, what: str = "its files") -> RetryableTaskError:
    """The disk holding the data folder is full: tried again later without using an
    attempt (``TRANSIENT_CODES``), and it completes once space is freed."""
    import shutil

    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MB free"
    except OSError:
        free = "free space unknown"
    return RetryableTaskError(f"the disk holding the data folder {folder} is full ({free}): "
                              f"{what} could not be written; tried again later, without using "
                              "an attempt, once space is freed", type="DiskFull",
                              code="disk_full")


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

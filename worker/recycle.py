"""Workers recycle themselves (``TINGJI_WORKER_MAX_RSS_MB``): a worker whose memory has
grown past the limit (funasr's long-audio growth, fragmentation over days) stops
claiming, finishes what it holds, records ``worker_recycled`` on the task that was
its last, and exits with ``EXIT_RECYCLE``, which ``tingji run`` (and the service unit)
restart at once.  Nothing waits for a lease: no task is left behind.  The check comes
after each finished task, so every worker does at least one before it recycles."""

from __future__ import annotations

import resource
from pathlib import Path

from tingji.supervise import EXIT_RECYCLE  # EX_TEMPFAIL: restart me now


def rss_mb() -> float:
    """This process's resident memory now (Linux: /proc; elsewhere its peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Recycler:
    def __init__(self, max_rss_mb: int | None) -> None:
        self.max_rss_mb = max_rss_mb or None
        self.rss_mb: float | None = None  # what it measured when it decided

    def due(self) -> bool:
        """Whether this worker should recycle (once: it stays decided)."""
        if self.rss_mb is not None:
            return False
        if self.max_rss_mb is None:
            return False
        now = rss_mb()
        if now <= self.max_rss_mb:
            return False
        self.rss_mb = now
        return True

    @property
    def decided(self) -> bool:
        return self.rss_mb is not None


__all__ = ["EXIT_RECYCLE", "Recycler", "rss_mb"]

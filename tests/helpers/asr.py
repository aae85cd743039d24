"""Helpers for tests that drive the ASR engine's cross-task batches directly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def jobs_for(clips: list[Path]) -> list[Any]:
    from worker.batching import AsrJob

    return [AsrJob(c) for c in clips]


def owner_of(jobs: list[Any]) -> Callable[[Any], int]:
    """Which job a segment array (as handed to the model) belongs to."""
    def owner(seg: Any) -> int:
        for n, job in enumerate(jobs):
            if any(seg is s for s in job.pieces):
                return n
        raise AssertionError("a segment of no job")
    return owner

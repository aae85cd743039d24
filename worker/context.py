"""What a task's run (``worker.pipeline.TaskRun``) is given by its worker and where it
stands: the ``RunContext`` (the settings, the queue, the ASR lane and scheduler, the
LLM), why a run was stopped, and the phase the worker schedules claims by."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from db.queue import Queue
    from db.reads import Reads
    from tingji.settings import Settings
    from worker.scheduler import AsrScheduler
    from worker.stages.llm import Llm


class AsrLane(Protocol):
    """What a run needs of the worker's ASR lane (``worker.asr.AsrEngine``) besides the
    scheduler that feeds it: VAD ahead of the model, whether the model is loaded yet,
    what it is (for the result), and the speaker-model loads to record."""

    @property
    def loaded(self) -> bool: ...

    @property
    def device(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def key(self) -> str | None:
        """What changes a decoding on this lane (engine, device, models); None until
        the model is loaded."""
        ...

    async def detect_vad(self, audio: Path) -> list[dict[str, Any]] | None: ...

    def take_speaker_loads(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class RunContext:
    """What a task's run may use of its worker: built once by the worker, shared by its
    runs.  A run never sees the ``Worker`` itself."""

    worker_id: str
    settings: Settings
    queue: Queue
    reads: Reads
    asr: AsrLane
    scheduler: AsrScheduler
    llm: Llm | None
    io_sem: asyncio.Semaphore


class StopReason(enum.Enum):
    """Why a run was asked to stop before it finished; each becomes one outcome."""

    CANCEL = "cancel"  # a user cancelled the task: recorded as cancelled
    SHUTDOWN = "shutdown"  # the worker is stopping: the task is handed back (released)
    LOST = "lost"  # the lease is gone (expired, taken): nothing to write
    TIMEOUT = "timeout"  # a stage ran past its limit: a retryable failure


class Phase(enum.Enum):
    """Where a run is, as its worker schedules claims and groups."""

    FETCHING = "fetching"  # claimed: downloading, normalizing, VAD ahead of the model
    READY = "ready"  # fetched, waiting for the scheduler to admit it to a group
    TRANSCRIBING = "transcribing"  # admitted to a group
    FINISHING = "finishing"  # past ASR (LLM stages, export) or resumed after it


__all__ = ["AsrLane", "Phase", "RunContext", "StopReason"]

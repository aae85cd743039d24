"""The ASR scheduler: tasks ready for ASR wait here, and whenever the model is free it
admits up to ``TINGJI_ASR_BATCH_TASKS`` of them as one group, which the engine
transcribes together on the model thread (``worker.asr``, ``worker.batching``).

One call for a task: ``await scheduler.transcribe(task_id, duration_s, job,
on_admitted=...)``.  The scheduler calls ``on_admitted(group_audio_s)`` when the task is
admitted (the task's transcribe stage starts then, not while it waits, so its time
limit never counts time spent behind other tasks), then decodes ``job`` with its group.
A task cancelled while waiting just leaves the queue; one cancelled while its group
runs leaves the group's remaining batches.  The model is loaded here only
(``load()``, with one ``on_loaded`` hook), before the first group or at a preload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from worker.asr import AsrEngine
from worker.batching import AsrJob, BatchStats

log = logging.getLogger("tingji.worker.scheduler")

# A group holds every member's whole audio in memory (float32, 64 kB per second);
# past an hour in all a task waits for the next group (the first one always goes).
GROUP_MAX_AUDIO_S = 3600.0
# When the model is free but fewer tasks are ready than a group holds, and more are
# still being fetched, wait this long for them.
GATHER_S = 0.5


def _settle(fut: asyncio.Future[object], value: object) -> None:
    if not fut.done():
        fut.set_result(value)


@dataclass(eq=False)
class Ticket:
    """One task's place in the lane."""

    task_id: str
    duration_s: float
    admitted: asyncio.Future[object] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    submitted: asyncio.Future[object] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    done: asyncio.Future[object] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    group_size: int = 1
    group_duration_s: float = 0.0
    stats: BatchStats | None = None

    def submit(self, job: AsrJob) -> None:
        _settle(self.submitted, job)

    def withdraw(self) -> None:
        """Leave the group (cancelled, or failed before submitting): it does not wait."""
        _settle(self.submitted, None)

    async def result(self) -> BatchStats | None:
        await asyncio.shield(self.done)
        return self.stats


@dataclass(frozen=True, slots=True)
class Transcribed:
    """How a task's decoding went in its group (the transcript is on the job)."""

    stats: BatchStats | None
    group_size: int


class AsrScheduler:
    def __init__(self, asr: AsrEngine, max_tasks: int, *,
                 fetching: Callable[[], int] = lambda: 0,
                 on_loaded: Callable[[], Awaitable[None]] | None = None) -> None:
        self.asr = asr
        self.max_tasks = max(1, max_tasks)
        self.fetching = fetching  # how many claimed tasks are still before the ASR stage
        self.on_loaded = on_loaded
        self.waiting: list[Ticket] = []
        self.current: list[Ticket] = []
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.groups = 0
        self._load_error: Exception | None = None

    async def transcribe(self, task_id: str, duration_s: float, job: AsrJob, *,
                         on_admitted: Callable[[float], Awaitable[None]]) -> Transcribed:
        """Wait for a group, call ``on_admitted(group_audio_s)``, decode ``job`` with the
        group.  An error of ``on_admitted`` (a cancel, a lost lease) or a cancellation
        takes the task out of the group without holding the others up."""
        ticket = await self.enter(task_id, duration_s)
        try:
            await on_admitted(ticket.group_duration_s)
            ticket.submit(job)
            stats = await ticket.result()
        finally:
            ticket.withdraw()
        return Transcribed(stats, ticket.group_size)

    async def enter(self, task_id: str, duration_s: float) -> Ticket:
        """Wait until this task is admitted into a group (then ``submit`` or
        ``withdraw`` the ticket; ``transcribe`` does both)."""
        ticket = Ticket(task_id, duration_s)
        self.waiting.append(ticket)
        self.poke()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="asr-scheduler")
        try:
            await asyncio.shield(ticket.admitted)
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                self.waiting.remove(ticket)
            ticket.withdraw()
            raise
        return ticket

    def poke(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def load(self) -> bool:
        """Load the model unless it is loaded: the one place that does, with the one
        ``on_loaded`` hook.  True when this call loaded it.  A model that did not load
        is not retried (its error is raised again)."""
        if self._load_error is not None:
            raise self._load_error
        try:
            loaded = await self.asr.ensure_loaded()
        except Exception as exc:
            self._load_error = exc
            raise
        if loaded and self.on_loaded is not None:
            await self.on_loaded()
        return loaded

    async def _next_group(self) -> list[Ticket]:
        while not self.waiting:
            self._wake.clear()
            await self._wake.wait()
        if not self.asr.loaded:
            # load before the first group forms, so it is as full as later ones; a
            # failure reaches every job through _run_group's second try
            with contextlib.suppress(Exception):
                await self.load()
        if len(self.waiting) < self.max_tasks and self.fetching() > 0:
            loop = asyncio.get_running_loop()
            until = loop.time() + GATHER_S
            while len(self.waiting) < self.max_tasks and self.fetching() > 0:
                left = until - loop.time()
                if left <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._wake.wait()
        group: list[Ticket] = []
        total = 0.0
        while self.waiting and len(group) < self.max_tasks:
            t = self.waiting[0]
            if group and total + t.duration_s > GROUP_MAX_AUDIO_S:
                break
            group.append(self.waiting.pop(0))
            total += t.duration_s
        for t in group:
            t.group_size, t.group_duration_s = len(group), total
        return group

    async def _run(self) -> None:
        while True:
            group = await self._next_group()
            if not group:
                continue
            self.current = group
            try:
                await self._run_group(group)
            finally:
                self.current = []
                for t in group:
                    t.withdraw()
                    _settle(t.done, None)

    async def _run_group(self, group: list[Ticket]) -> None:
        for t in group:
            _settle(t.admitted, None)
        await asyncio.wait([t.submitted for t in group])
        jobs = [job for t in group if isinstance(job := t.submitted.result(), AsrJob)]
        if not jobs:
            return
        try:
            await self.load()
            stats = await self.asr.transcribe_many(jobs)
        except Exception as exc:  # noqa: BLE001  (model load failure, or a bug: every job)
            for job in jobs:
                if job.error is None:
                    job.error = exc
            return
        self.groups += 1
        for t in group:
            t.stats = stats
        if len(jobs) > 1 or stats.oom_splits:
            log.info("ASR group %d: %d tasks, %d segments in %d model calls "
                     "(batch sizes: max %d, mean %.1f; %d OOM splits) in %.1f s",
                     self.groups, len(jobs), stats.segments, stats.calls,
                     max(stats.sizes, default=0),
                     sum(stats.sizes) / len(stats.sizes) if stats.sizes else 0.0,
                     stats.oom_splits, stats.seconds)


__all__ = ["AsrScheduler", "GROUP_MAX_AUDIO_S", "Ticket", "Transcribed"]

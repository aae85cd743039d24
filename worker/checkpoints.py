"""Checkpoints inside the transcribe stage: a crash costs at most a minute of decoding.

While a task is transcribed the model lane puts each decoded piece on its job's
``fresh`` queue (``worker.batching``); ``PieceWriter`` takes them from there every
``TINGJI_ASR_CHECKPOINT_S`` seconds and writes them, with what the VAD found, through
``Queue.save_transcription`` (only while this worker holds the task).  A worker that
takes the task over reads them back (``Reads.partial_transcription``), splits the audio
again with the same VAD result, which gives the same pieces in the same order, and
decodes only the pieces that are missing: decoding is per piece and padding-invariant,
so the finished transcript is the one an uninterrupted run gives
(``tests/unit/test_engines.py``, ``tests/test_worker.py``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from db.errors import LeaseLost
from worker.batching import AsrJob

if TYPE_CHECKING:
    from db.queue import Queue

log = logging.getLogger("tingji.worker.checkpoints")


class PieceWriter:
    """Writes one job's decoded pieces as they come, for one task this worker holds."""

    def __init__(self, queue: Queue, task_id: str, worker_id: str, job: AsrJob,
                 every_s: float) -> None:
        self.queue, self.task_id, self.worker_id = queue, task_id, worker_id
        self.job, self.every_s = job, every_s
        self.saved = 0  # pieces written by this writer
        self.writes = 0
        self._headed = False

    async def run(self) -> None:
        """Write every ``every_s`` seconds until cancelled.  A failed write keeps its
        pieces for the next one; a lost lease ends the writing (the run is stopped)."""
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.flush()
            except LeaseLost:
                return
            except Exception as exc:  # noqa: BLE001  (the database is away: next time)
                log.warning("could not write the transcription's checkpoint of %s: %s",
                            self.task_id, exc)

    async def flush(self) -> int:
        """Write what was decoded since the last write; returns how many pieces."""
        job = self.job
        if job.found_vad is None or not job.piece_s:
            return 0  # not split yet, or no VAD model (the file is one piece)
        fresh = []
        while job.fresh:
            fresh.append(job.fresh.popleft())
        if not fresh and self._headed:
            return 0
        rows = [(i, round(job.piece_s[i], 3), result) for i, result in fresh]
        try:
            await self.queue.save_transcription(
                self.task_id, self.worker_id, key=job.key, vad=job.found_vad,
                pieces=len(job.piece_s), speech_s=round(job.speech_s, 3), decoded=rows)
        except BaseException:
            job.fresh.extendleft(reversed(fresh))  # kept for the next write
            raise
        self._headed = True
        self.saved += len(rows)
        self.writes += 1
        return len(rows)

    async def flush_quietly(self) -> None:
        """A last write as the run stops (handed back, timed out, failed): never raises."""
        try:
            n = await self.flush()
            if n:
                log.info("kept %d decoded pieces of %s for the next run", n, self.task_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not keep the transcription's checkpoint of %s: %s",
                        self.task_id, exc)


__all__ = ["PieceWriter"]

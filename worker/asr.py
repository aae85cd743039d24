"""The worker's ASR lane: the engine (``worker.engines``), loaded once per worker process
and run on one dedicated thread (the model lane), so the event loop never blocks on
inference.

The lane transcribes a *group* of tasks at a time (``worker.batching``): their speech is
decoded in shared batches; per task it reports the seconds of speech decoded and stops
when the task is cancelled or timed out, between batches.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.values import SegmentRow
from worker.batching import AsrJob, BatchStats, CrossTaskBatch
from worker.engines.base import AsrConfig, Engine, ModelLoadError, to_segments
from worker.engines.loading import load_engine, no_gpu_device, resolve_device
from worker.engines.torch.vad_pool import VadPool
from worker.errors import PermanentTaskError, TaskCancelled

log = logging.getLogger("tingji.worker.asr")


@dataclass
class Transcript:
    text: str
    segments: list[SegmentRow]
    speech_s: float
    seconds: float


def release_freed_memory() -> None:
    """Hand memory freed after loading back to the system.  funasr's checkpoint loading
    leaves freed pages in glibc's heap (and the ONNX engine frees the torch weights it
    replaced): measured here with the full-size models, resident 4,235 -> 2,551 MiB
    (torch) and 3,689 -> 1,992 MiB (onnx) after ``malloc_trim``."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class AsrEngine:
    def __init__(self, config: AsrConfig) -> None:
        self.config = config
        self.backend: Engine | None = None  # the loaded engine
        # The model lane: every call into the model happens on this one thread.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tingji-model")
        self._load_lock = asyncio.Lock()
        self.batcher: CrossTaskBatch | None = None
        self.spk_loads = 0  # the speaker model's loads not yet counted by the worker
        self.vad_pool: VadPool | None = None
        if config.vad_processes > 0 and config.vad_model:
            if importlib.util.find_spec("torch") is None:
                log.info("TINGJI_VAD_PROCESSES is not used: VAD processes run torch, which "
                         "is not installed (the ONNX engine runs VAD on its lane)")
            else:
                self.vad_pool = VadPool(config.vad_model, config.vad_kwargs(),
                                        config.vad_processes, config.generate_kw)

    @property
    def loaded(self) -> bool:
        return self.backend is not None

    @property
    def engine(self) -> str:
        """What runs the models: torch or onnx once loaded (the setting before)."""
        return self.backend.name if self.backend is not None else self.config.engine

    @property
    def device(self) -> str:
        return self.backend.device if self.backend is not None else "cpu"

    @property
    def description(self) -> str:
        return self.config.description

    @property
    def key(self) -> str | None:
        return self.batcher.key if self.batcher is not None else None

    def take_speaker_loads(self) -> str | None:
        """What the speaker model's loads since the last call loaded (for the workers
        table's count of model loads), once; None when there were none."""
        if not self.spk_loads:
            return None
        self.spk_loads = 0
        return f"{self.config.description} + {self.config.spk_model}"

    def decoding_key(self, backend: Engine) -> str:
        """What a checkpoint of a transcription must have been decoded with to be
        continued here (``worker.batching.Resume``): the engine on its device, the models
        and the VAD's settings."""
        c = self.config
        return json.dumps({"engine": backend.name, "device": backend.device,
                           "int8": backend.name == "onnx" and c.onnx_int8,
                           "models": c.description, "vad": c.vad_kwargs()}, sort_keys=True)

    def _load(self) -> None:
        t = time.perf_counter()
        backend = load_engine(self.config)
        if backend.name == "onnx" and self.vad_pool is not None:  # processes run torch
            log.info("TINGJI_VAD_PROCESSES is not used by the ONNX engine: VAD runs on "
                     "its lane")
            self.vad_pool.close()
            self.vad_pool = None
        self.batcher = CrossTaskBatch(backend, key=self.decoding_key(backend))
        self.backend = backend
        release_freed_memory()
        threads = self.config.ncpu
        log.info("loaded %s on %s (%d thread%s) in %.1f s (engine %s: %s)",
                 self.config.description, backend.device, threads, "" if threads == 1 else "s",
                 time.perf_counter() - t, backend.name, backend.describe())

    async def ensure_loaded(self) -> bool:
        """Load the model once (on the model lane); True when this call loaded it."""
        async with self._load_lock:
            if self.backend is not None:
                return False
            await asyncio.get_running_loop().run_in_executor(self._model_thread, self._load)
            return True

    def _run_group(self, jobs: list[AsrJob]) -> BatchStats:
        assert self.batcher is not None and self.backend is not None
        wanting = [j for j in jobs if j.speakers is not None]
        if wanting and not self.backend.speakers_loaded:
            try:
                self.backend.load_speakers()
                self.spk_loads += 1
            except PermanentTaskError as exc:
                for job in wanting:
                    job.error = exc
        return self.batcher.run(jobs)

    async def transcribe_many(self, jobs: list[AsrJob]) -> BatchStats:
        """Transcribe a group of jobs together; each job ends with ``result`` or ``error``
        (or its ``stop`` set).  Loads the model first if needed."""
        await self.ensure_loaded()
        return await asyncio.get_running_loop().run_in_executor(
            self._model_thread, self._run_group, jobs)

    async def detect_vad(self, audio: Path) -> list[dict[str, Any]] | None:
        """VAD ahead of the lane, in the pool; None when there is no pool (the lane
        runs VAD itself)."""
        return await self.vad_pool.detect(audio) if self.vad_pool else None

    def close(self) -> None:
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        if self.backend is not None:
            self.backend.close()
        if self.vad_pool is not None:
            self.vad_pool.close()


def transcript_of(job: AsrJob) -> Transcript:
    """The job's transcript, or its error raised (``TaskCancelled`` when it was stopped)."""
    if job.error is not None:
        raise job.error
    if job.result is None:
        raise TaskCancelled()
    segments = job.result.segments
    return Transcript(job.result.text, segments,
                      job.speech_s or (segments[-1].end_ms / 1000 if segments else 0.0),
                      job.seconds)


__all__ = ["AsrConfig", "AsrEngine", "ModelLoadError", "Transcript", "no_gpu_device",
           "release_freed_memory", "resolve_device", "to_segments", "transcript_of"]

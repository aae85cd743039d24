"""Voice activity detection in worker processes, ahead of the model lane.

FSMN-VAD is light on the model but heavy in Python: Kaldi fbank plus a per-frame state
machine, about 0.4 s per minute of audio on one core here, whatever the device.  In the
model lane that time is spent with the GPU idle: for a group of twenty one-minute clips
it would be most of the group's time.  With ``TINGJI_VAD_PROCESSES`` > 0 a task's VAD
runs in a pool of processes (each with its own CPU copy of the VAD model) as soon as its
audio is fetched, in parallel with other tasks' VAD and with the GPU decoding earlier
groups; the lane then only slices the audio.

The pool runs the same ``AutoModel.generate`` call on the same model with the same
settings (and the same per-frame decision, ``worker.engines.torch.fsmnvad``), so the
segments are those of in-lane VAD (a test checks it).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from worker.engines.model_folders import FUNASR_BUILD_KW

log = logging.getLogger("tingji.worker.vad")

_MODEL: Any = None
_GENERATE_KW: dict[str, Any] = {}


def _exit_with_parent(parent: int) -> None:
    """A pool process whose worker died (SIGKILL, OOM killer) must not live on as an
    orphan holding a model: it exits within a second of its parent."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _init(vad_model: str, vad_kwargs: dict[str, Any], generate_kw: dict[str, Any]) -> None:
    """In each pool process: load the VAD model once, on the CPU, one thread."""
    global _MODEL, _GENERATE_KW
    _exit_with_parent(os.getppid())
    import logging as _logging

    import torch

    torch.set_num_threads(1)
    from worker.engines.torch.patches import import_funasr

    import_funasr()  # change 6
    from funasr import AutoModel

    _logging.getLogger().setLevel(_logging.ERROR)
    _MODEL = AutoModel(model=vad_model, device="cpu", ncpu=1,
                       **(copy.deepcopy(vad_kwargs) | FUNASR_BUILD_KW))
    from worker.engines.torch.fsmnvad import make_fast_vad

    make_fast_vad(_MODEL.model)  # worker.engines.torch.patches, change 3
    _GENERATE_KW = generate_kw


def _detect(audio: str) -> list[dict[str, Any]]:
    return _MODEL.generate(input=audio, **_GENERATE_KW)  # type: ignore[no-any-return]


def _ping() -> int:
    return os.getpid()


class VadPool:
    def __init__(self, vad_model: str, vad_kwargs: dict[str, Any], processes: int,
                 generate_kw: dict[str, Any]) -> None:
        self.processes = processes
        self._args = (vad_model, vad_kwargs, generate_kw)
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the worker process has threads (the model lane); never fork it
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init, initargs=self._args)
        return self._pool

    async def start(self) -> None:
        """Start the processes and load their models (else the first tasks wait for it)."""
        loop = asyncio.get_running_loop()
        pool = self._executor()
        await asyncio.gather(*(loop.run_in_executor(pool, _ping)
                               for _ in range(self.processes)))

    async def detect(self, audio: Path) -> list[dict[str, Any]]:
        """funasr's VAD result for one file: ``[{"key": ..., "value": [[beg_ms, end_ms]...]}]``."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), _detect, str(audio))
        except BrokenProcessPool:
            # a pool process died (killed, out of memory): a new pool, one more try
            log.warning("the VAD process pool broke; restarting it")
            self.close()
            return await loop.run_in_executor(self._executor(), _detect, str(audio))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


__all__ = ["VadPool"]

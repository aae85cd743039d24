"""FunASR, loaded once per worker process and run on one dedicated thread (the
model lane), so the event loop never blocks on inference.

Hub ids (``paraformer-zh``, ``fsmn-vad``, ``ct-punc``) and local model folders go
through the same ``AutoModel`` call; ``disable_update=True`` always (otherwise funasr
asks PyPI for a newer version, with no timeout).  After loading, the Paraformer
predictor is switched to tingji's padding-invariant subclass (``worker.engines.torch.paraformer``).

The engine transcribes a *group* of tasks at a time (``worker.batching``): their speech
is decoded in shared batches; per task it reports the seconds of speech decoded and
stops when the task is cancelled or timed out, between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.values import SegmentRow
from worker.batching import AsrJob, BatchStats, CrossTaskBatch
from worker.engines.model_folders import FUNASR_BUILD_KW
from worker.engines.torch.vad_pool import VadPool
from worker.errors import PermanentTaskError, TaskCancelled, load_failure

log = logging.getLogger("tingji.worker.asr")


@dataclass(frozen=True)
class AsrConfig:
    model: str = "paraformer-zh"
    vad_model: str | None = "fsmn-vad"
    punc_model: str | None = "ct-punc"
    device: str = "auto"
    batch_size_s: int = 300  # padded seconds per batch on a GPU
    cpu_batch_size_s: int = 60  # ... on a CPU (0: one segment per call, as funasr)
    vad_max_end_silence_ms: int | None = None
    vad_processes: int = 0  # >0: VAD in that many processes, ahead of the lane
    spk_model: str | None = "cam++"  # loaded the first time a task asks for speakers
    ncpu: int = max(1, os.cpu_count() or 1)
    engine: str = "auto"  # torch | onnx | auto (onnx on a CPU when exported, else torch)
    onnx_int8: bool = True  # the int8 graphs when the export has them
    data_dir: Path | None = None  # where ``tingji models export-onnx`` put the graphs

    def vad_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_single_segment_time": 60_000}
        if self.vad_max_end_silence_ms:
            kw["max_end_silence_time"] = self.vad_max_end_silence_ms
        return kw

    @property
    def generate_kw(self) -> dict[str, Any]:
        return {"sentence_timestamp": True, "batch_size_s": self.batch_size_s}

    @property
    def description(self) -> str:
        return " + ".join(m for m in (self.model, self.vad_model, self.punc_model) if m)

    def roles(self) -> list[tuple[str, str, str | None]]:
        """(role, setting, model) of the models the ONNX engine runs as graphs
        (``worker.engines.onnx.graphs.GRAPH_ROLES``)."""
        return [("ASR", "TINGJI_ASR_MODEL", self.model),
                ("VAD", "TINGJI_VAD_MODEL", self.vad_model),
                ("punctuation", "TINGJI_PUNC_MODEL", self.punc_model)]


@dataclass
class Transcript:
    text: str
    segments: list[SegmentRow]
    speech_s: float
    seconds: float


class ModelLoadError(RuntimeError):
    """The ASR model could not be loaded: the worker cannot work at all."""


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


def no_gpu_device() -> bool:
    """Linux without an NVIDIA device node (nor WSL's GPU bridge): CUDA cannot be there,
    so ``auto`` needs no torch import (about 0.3 GB resident) to know it."""
    if not sys.platform.startswith("linux"):
        return False
    dev = Path("/dev")
    return not any(dev.glob("nvidia[0-9]*")) and not (dev / "dxg").exists()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    if no_gpu_device():
        return "cpu"
    try:
        import torch
    except ImportError:  # a worker installed for the ONNX engine only
        return "cpu"

    return "cuda" if torch.cuda.is_available() else "cpu"


class AsrEngine:
    def __init__(self, config: AsrConfig) -> None:
        self.config = config
        self.model: Any = None
        self.device = "cpu"
        self.engine = config.engine  # what runs the models, once loaded: torch or onnx
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
        return self.model is not None

    def _load(self) -> None:
        t = time.perf_counter()
        c = self.config
        self.device = resolve_device(c.device)
        graphs = self._onnx_graphs()
        scope: Callable[[], Any] = contextlib.nullcontext
        if graphs:
            self.device = "cpu"  # ONNX Runtime's CPU provider
            model = self._load_onnx(graphs)
            what = ", ".join(model.paths())
            per_call = 2 * model.model.lanes  # unpadded: see worker.engines.onnx.engine
            batch_size_s = 0
            if self.vad_pool is not None:  # its processes run torch's VAD
                log.info("TINGJI_VAD_PROCESSES is not used by the ONNX engine: VAD runs on "
                         "its lane")
                self.vad_pool.close()
                self.vad_pool = None
        else:
            model = self._load_torch()
            from worker.engines.torch import patches
            from worker.engines.torch.paraformer import decode_scope

            what = patches.patch_model(model)
            scope = decode_scope
            per_call = 0
            batch_size_s = c.cpu_batch_size_s if self.device == "cpu" else c.batch_size_s
        self.batcher = CrossTaskBatch(model, device=self.device, batch_size_s=batch_size_s,
                                      generate_kw=c.generate_kw, segments_per_call=per_call,
                                      decode_scope=scope)
        self.model = model
        release_freed_memory()
        log.info("loaded %s on %s in %.1f s (engine %s: %s)", c.description, self.device,
                 time.perf_counter() - t, self.engine, what)

    def _load_torch(self) -> Any:
        """funasr's ``AutoModel`` with the VAD and punctuation models (torch)."""
        c = self.config
        from worker.engines.model_sources import unavailable

        why = unavailable(c.roles())  # seconds, where funasr alone retries the hub for 90 s
        if why is not None:
            raise ModelLoadError(f"cannot load the models: {why}")
        try:
            from funasr import AutoModel  # 6-10 s: only ever on the model lane

            from worker.engines.torch import patches

            patches.apply()
        except ImportError as exc:
            raise ModelLoadError(
                f"the torch engine needs {exc.name or 'funasr'}, which is not installed: "
                "pip install 'tingji[worker]', or run the ONNX engine (graphs made once "
                f"with `tingji models export-onnx --quantize` where torch is installed, "
                "TINGJI_ENGINE=onnx)") from None
        kwargs: dict[str, Any] = dict(model=c.model, device=self.device, ncpu=c.ncpu,
                                      **FUNASR_BUILD_KW)
        if c.vad_model:  # funasr builds these from their own kwargs, not the ASR model's
            kwargs.update(vad_model=c.vad_model,
                          vad_kwargs={**c.vad_kwargs(), **FUNASR_BUILD_KW})
        if c.punc_model:
            kwargs.update(punc_model=c.punc_model, punc_kwargs=dict(FUNASR_BUILD_KW))
        try:
            model = AutoModel(**kwargs)
        except Exception as exc:
            raise ModelLoadError(load_failure(f"ASR model {c.description}", c.model,
                                              "TINGJI_ASR_MODEL", exc)) from exc
        return model

    def _onnx_graphs(self) -> dict[str, Path]:
        """The graph folders by role when the ONNX engine runs ({} for torch).  With
        ``onnx`` a missing export (or ONNX Runtime) stops the worker with one line that
        says what to do; with ``auto`` (the default: ONNX on a CPU) the worker says so
        and runs torch."""
        c = self.config
        if c.engine == "torch" or (c.engine == "auto" and self.device != "cpu"):
            self.engine = "torch"
            return {}
        from worker.engines.onnx.graphs import GraphsMissing, find_graphs

        try:
            if importlib.util.find_spec("onnxruntime") is None:
                raise GraphsMissing("the ONNX engine needs onnxruntime: pip install "
                                    "'tingji[onnx]'")
            graphs = {role: find_graphs(source, c.data_dir, role, setting)
                      for role, setting, source in c.roles() if source}
        except GraphsMissing as exc:
            if c.engine == "onnx":
                raise ModelLoadError(str(exc)) from None
            log.info("engine: torch (TINGJI_ENGINE=auto runs ONNX graphs on a CPU where "
                     "they have been exported; there are none for %s)", c.model)
            log.debug("no ONNX graphs: %s", exc)
            self.engine = "torch"
            return {}
        if c.engine == "onnx" and self.device != "cpu":
            log.warning("TINGJI_ENGINE=onnx runs on the CPU (device %s is not used)",
                        self.device)
        self.engine = "onnx"
        return graphs

    def _load_onnx(self, graphs: dict[str, Path]) -> Any:
        """The ONNX engine's models (``worker.engines.onnx.engine.OnnxModels``): neither torch
        nor funasr is imported."""
        from worker.engines.onnx.engine import OnnxModels
        from worker.engines.onnx.graphs import EXPORT_HINT, GraphsMissing

        c = self.config
        try:
            return OnnxModels(graphs, int8=c.onnx_int8, threads=c.ncpu,
                              vad_kwargs=c.vad_kwargs())
        except GraphsMissing as exc:
            raise ModelLoadError(str(exc)) from None
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ModelLoadError(f"cannot load the ONNX graphs: {type(exc).__name__}: "
                                 f"{first} (`{EXPORT_HINT} --force` exports them again)"
                                 ) from exc

    async def ensure_loaded(self) -> bool:
        """Load the model once (on the model lane); True when this call loaded it."""
        async with self._load_lock:
            if self.model is not None:
                return False
            await asyncio.get_running_loop().run_in_executor(self._model_thread, self._load)
            return True

    def _load_spk(self) -> None:
        """The speaker model (CAM++ by default), the first time a task asks for labels:
        on the model lane, into the loaded AutoModel, as funasr's own ``spk_model``."""
        assert self.batcher is not None
        c = self.config
        if not c.spk_model:
            raise PermanentTaskError("speaker labels need a speaker model (TINGJI_SPK_MODEL)",
                                     type="NoSpeakerModel")
        t = time.perf_counter()
        try:
            from funasr import AutoModel  # the ONNX engine imports torch here, not before
            from funasr.models.campplus.cluster_backend import ClusterBackend
        except ImportError as exc:  # an ONNX worker without torch (tingji[worker-onnx])
            raise PermanentTaskError(
                f"speaker labels need the speaker model, which runs on torch, and this "
                f"worker cannot import {exc.name or 'funasr'}: pip install 'tingji[worker]' "
                "here, or leave such tasks to a worker that has it",
                type="SpeakersNeedTorch") from None
        try:
            spk, spk_kwargs = AutoModel.build_model(
                model=c.spk_model, model_revision="master", device=self.device, ncpu=c.ncpu,
                **FUNASR_BUILD_KW)
            self.model.cb_model = ClusterBackend().to(self.device)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise PermanentTaskError(f"cannot load the speaker model {c.spk_model}: "
                                     f"{type(exc).__name__}: {first}",
                                     type="SpeakerModelLoad") from exc
        self.model.spk_mode = "punc_segment"
        from worker.engines.torch import patches

        patches.add_speaker_model(self.model, spk_kwargs)  # funasr's kwargs snapshot
        self.batcher.spk = (spk, spk_kwargs)
        self.spk_loads += 1
        log.info("loaded speaker model %s in %.1f s", c.spk_model, time.perf_counter() - t)

    def _run_group(self, jobs: list[AsrJob]) -> BatchStats:
        assert self.batcher is not None
        wanting = [j for j in jobs if j.speakers is not None]
        if wanting and self.batcher.spk is None:
            try:
                self._load_spk()
            except PermanentTaskError as exc:
                for job in wanting:
                    job.error = exc
        stats = self.batcher.run(jobs)
        return stats

    async def transcribe_many(self, jobs: list[AsrJob]) -> BatchStats:
        """Transcribe a group of jobs together; each job ends with ``result`` or ``error``
        (or its ``stop`` set).  Loads the model first if needed."""
        await self.ensure_loaded()
        return await asyncio.get_running_loop().run_in_executor(
            self._model_thread, self._run_group, jobs)

    async def transcribe(self, audio: Path, progress: Callable[[float, float], None],
                         stop: threading.Event) -> Transcript:
        """One file on its own (a group of one)."""
        job = AsrJob(audio, progress, stop)
        await self.transcribe_many([job])
        return transcript_of(job)

    async def detect_vad(self, audio: Path) -> list[dict[str, Any]] | None:
        """VAD ahead of the lane, in the pool; None when there is no pool (the lane
        runs VAD itself)."""
        return await self.vad_pool.detect(audio) if self.vad_pool else None

    def close(self) -> None:
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        lanes = getattr(getattr(self.model, "model", None), "close", None)
        if lanes is not None:  # the ONNX engine's threads
            lanes()
        if self.vad_pool is not None:
            self.vad_pool.close()


def transcript_of(job: AsrJob) -> Transcript:
    """The job's transcript, or its error raised (``TaskCancelled`` when it was stopped)."""
    if job.error is not None:
        raise job.error
    if job.result is None:
        raise TaskCancelled()
    result = job.result
    segments = to_segments(result)
    return Transcript(str(result.get("text", "")).strip(), segments,
                      job.speech_s or (segments[-1].end_ms / 1000 if segments else 0.0),
                      job.seconds)


def _chars(stamps: Any) -> list[list[int]] | None:
    """funasr's per-token [start, end] pairs, as plain integers (None when absent)."""
    if not stamps:
        return None
    return [[int(a), int(b)] for a, b in stamps]


def to_segments(result: dict[str, Any]) -> list[SegmentRow]:
    """Sentence segments from funasr's result: ``sentence_info`` when punctuation is on;
    otherwise sentences cut from the character timestamps; otherwise one segment."""
    info = result.get("sentence_info")
    out: list[SegmentRow] = []
    if info:
        for s in info:
            text = str(s.get("text", "")).strip()
            if text:
                start, end = int(s.get("start", 0)), int(s.get("end", 0))
                spk = s.get("spk")
                out.append(SegmentRow(start, max(start, end), text, _chars(s.get("timestamp")),
                                      int(spk) if spk is not None else None))
        return out
    text = str(result.get("text", "")).replace(" ", "")
    stamps = result.get("timestamp") or []
    if not text:
        return out
    if stamps and len(stamps) == len(text):
        start, buf = int(stamps[0][0]), ""
        for i, ch in enumerate(text):
            buf += ch
            gap = i + 1 < len(text) and stamps[i + 1][0] - stamps[i][1] > 600
            if len(buf) >= 20 or gap or i + 1 == len(text):
                out.append(SegmentRow(start, int(stamps[i][1]), buf,
                                      _chars(stamps[i + 1 - len(buf):i + 1])))
                buf = ""
                if i + 1 < len(text):
                    start = int(stamps[i + 1][0])
        return out
    end = int(stamps[-1][1]) if stamps else 0
    return [SegmentRow(0, end, text)]

"""Cross-task batching: the speech of several tasks decoded in shared batches.

funasr batches VAD segments only inside one file, so a queue of one-minute clips keeps
a GPU on small batches.  The worker sees the whole queue; for a group of ready tasks
(``TINGJI_ASR_BATCH_TASKS``) ``CrossTaskBatch.run`` does, on the model thread:

1. **split** – each task through ``AutoModel.generate`` with the ASR calls intercepted:
   VAD runs (or is answered from VAD done ahead, ``worker.engines.torch.vad_pool``) and the segments
   funasr cuts are recorded (the ASR calls get empty answers, so nothing else runs);
2. **decode** – the union of all tasks' segments, sorted by length, in batches bounded by
   padded seconds (``TINGJI_BATCH_SIZE_S`` on a GPU, as funasr bounds them;
   ``TINGJI_CPU_BATCH_SIZE_S`` on a CPU, where funasr decodes one segment per call: with
   padding-invariant decoding, batching is 1.5x faster there too).  A cancelled or
   failed task's segments leave the remaining batches; a CUDA out-of-memory error
   splits the batch and lowers the bound; any other error is narrowed down by bisection
   to the one task it belongs to;
3. **assemble** – each task through ``AutoModel.generate`` again, its VAD and ASR calls
   answered from steps 1 and 2, so funasr's own code merges segments, punctuates and
   builds sentence timestamps, per task.

Decoding is padding-invariant (``worker.engines.torch.paraformer``), so every task gets the text and
timestamps it gets alone.  Errors stay with their task: one undecodable file never
fails the others.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.engines.torch import patches
from worker.errors import RetryableTaskError, TaskCancelled
from worker.stages.media import SAMPLE_RATE  # what the normalized audio and funasr use

log = logging.getLogger("tingji.worker.batching")



@dataclass
class AsrJob:
    """One task's audio in a cross-task group; results are filled in on the model lane."""

    audio: Path
    progress: Callable[[float, float], None] = lambda done, total: None
    stop: threading.Event = field(default_factory=threading.Event)
    vad: list[dict[str, Any]] | None = None  # funasr's VAD result, when done ahead
    hotwords: tuple[str, ...] = ()  # the bias for SeACo-Paraformer; groups never mix sets
    speakers: int | str | None = None  # label speakers: "auto" or how many (None: don't)
    result: dict[str, Any] | None = None  # funasr's result for the file
    error: BaseException | None = None
    seconds: float = 0.0  # model-lane time attributed to this job
    speech_s: float = 0.0
    # set while the group runs
    calls: list[int] = field(default_factory=list)  # inputs per funasr ASR call
    segments: list[Any] = field(default_factory=list)
    decoded: list[dict[str, Any] | None] = field(default_factory=list)
    done_s: float = 0.0

    @property
    def alive(self) -> bool:
        return self.error is None and not self.stop.is_set()

    def check(self) -> None:
        if self.stop.is_set():
            raise TaskCancelled()


@dataclass
class BatchStats:
    """What one group did: for the logs, the task's result and the benchmark."""

    tasks: int = 0
    segments: int = 0
    calls: int = 0
    sizes: list[int] = field(default_factory=list)  # segments per model call
    padded_s: list[float] = field(default_factory=list)  # padded seconds per call
    oom_splits: int = 0
    seconds: float = 0.0
    # the model thread's time by phase (the benchmark's breakdown): split includes VAD
    # not done ahead, replay is punctuation and sentence assembly
    split_s: float = 0.0
    decode_s: float = 0.0
    replay_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "segments": self.segments, "calls": self.calls,
                "max_batch": max(self.sizes, default=0),
                "mean_batch": round(sum(self.sizes) / len(self.sizes), 2) if self.sizes else 0,
                "oom_splits": self.oom_splits}


def is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except Exception:  # noqa: BLE001
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class _Intercept:
    """Answers the ``AutoModel.inference`` calls that ``inference_with_vad`` makes for one
    file: VAD and ASR either recorded (split) or replayed (assemble)."""

    def __init__(self, model: Any, original: Callable[..., Any], job: AsrJob, *,
                 replay: bool) -> None:
        self.model, self.original, self.job, self.replay = model, original, job, replay
        self.asr_kw: dict[str, Any] | None = None
        self.call = 0
        self.offset = 0

    def __call__(self, input: Any, *args: Any, **kw: Any) -> Any:  # noqa: A002
        job, sub = self.job, kw.get("model")
        job.check()
        if sub is not None and sub is self.model.vad_model:
            if job.vad is None:  # not done ahead (worker.engines.torch.vad_pool): here
                job.vad = copy.deepcopy(self.original(input, *args, **kw))
            job.speech_s = sum((seg[1] - seg[0]) / 1000.0 for r in job.vad
                               for seg in r.get("value", []))
            return copy.deepcopy(job.vad)
        if sub is not None and sub is self.model.model and isinstance(input, list):
            n = len(input)
            if self.replay:
                if self.call >= len(job.calls) or job.calls[self.call] != n:
                    raise RuntimeError("funasr asked for other segments than it did before")
                out = job.decoded[self.offset:self.offset + n]
                self.call += 1
                self.offset += n
                return copy.deepcopy(out)
            self.asr_kw = {k: v for k, v in kw.items() if k != "input_len"}
            job.calls.append(n)
            job.segments.extend(input)
            return [{"key": f"seg{len(job.segments) - n + i}", "text": "", "timestamp": []}
                    for i in range(n)]
        return self.original(input, *args, **kw)


class CrossTaskBatch:
    """Runs one group of jobs through a loaded ``funasr.AutoModel``, or the ONNX engine's
    stand-in for it (``worker.engines.onnx.engine.OnnxModels``), on the model lane."""

    def __init__(self, model: Any, *, device: str, batch_size_s: int,
                 batch_size_threshold_s: int = 60, generate_kw: dict[str, Any] | None = None,
                 decode_hook: Callable[[list[Any]], None] | None = None,
                 segments_per_call: int = 0,
                 decode_scope: Callable[[], Any] = contextlib.nullcontext) -> None:
        self.model = model
        self.device = device
        # padded milliseconds per batch (0: one segment per call, as funasr on a CPU)
        self.max_ms = max(0, batch_size_s) * 1000
        # a model that never pads (the ONNX engine: one graph call per segment, several
        # at once) takes this many segments per call, of any length; 0: padded batches
        self.segments_per_call = segments_per_call
        self.threshold_ms = batch_size_threshold_s * 1000
        self.generate_kw = generate_kw or {}
        self.decode_hook = decode_hook  # tests: called with each batch before decoding
        # around each model call (worker.engines.torch.paraformer's)
        self.decode_scope = decode_scope
        self._asr_kw: dict[str, Any] | None = None
        self._bias: dict[str, str] = {}  # funasr's hotword argument for the sub-group
        # the speaker model (funasr's spk_model and its kwargs), once a task asked for it
        self.spk: tuple[Any, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ phases
    def run(self, jobs: list[AsrJob]) -> BatchStats:
        """Decode a group.  Jobs with different hotwords never share a model call: the
        bias is one per call, so the group runs as one sub-group per hotword set, each
        giving every task the text it gets alone."""
        t0 = time.perf_counter()
        stats = BatchStats(tasks=len(jobs))
        by_bias: dict[tuple[str, ...], list[AsrJob]] = {}
        for job in jobs:
            by_bias.setdefault(job.hotwords, []).append(job)
        with tempfile.TemporaryDirectory(prefix="tingji-hotwords-") as tmp:
            for n, (hotwords, sub) in enumerate(by_bias.items()):
                self._bias = {}
                if hotwords:  # a file tingji writes: funasr reads a string as path or URL
                    path = Path(tmp) / f"hotwords{n}.txt"
                    path.write_text("\n".join(hotwords) + "\n", encoding="utf-8")
                    self._bias = {"hotword": str(path)}
                self._run(sub, stats)
        stats.seconds = time.perf_counter() - t0
        return stats

    def _run(self, jobs: list[AsrJob], stats: BatchStats) -> None:
        if getattr(self.model, "vad_model", None) is None:
            # no VAD: funasr decodes each file whole; nothing to share
            t = time.perf_counter()
            for job in jobs:
                self._whole(job)
            stats.decode_s += time.perf_counter() - t
            return
        t0 = time.perf_counter()
        for job in jobs:
            self._per_job(job, replay=False)
        total = sum(len(s) for j in jobs if j.alive for s in j.segments) / SAMPLE_RATE
        t1 = time.perf_counter()
        self._decode_all(jobs, stats)
        t2 = time.perf_counter()
        decode_s = t2 - t1
        for job in jobs:
            if job.alive:
                share = sum(len(s) for s in job.segments) / SAMPLE_RATE / total if total else 0
                job.seconds += decode_s * share
                self._per_job(job, replay=True)
            job.segments = []  # the audio is no longer needed
        stats.split_s += t1 - t0
        stats.decode_s += decode_s
        stats.replay_s += time.perf_counter() - t2

    def _per_job(self, job: AsrJob, *, replay: bool) -> None:
        if not job.alive:
            return
        model = self.model
        hook = _Intercept(model, model.inference, job, replay=replay)
        t = time.perf_counter()
        # Speakers: only while assembling a task that asked for them (funasr labels the
        # sentences then; during the split pass its embeddings would be thrown away).
        extra = self._speakers(job) if replay else {}
        try:
            with patches.intercepting(model, hook):  # funasr's calls come to the hook
                res = model.generate(input=str(job.audio), **self.generate_kw,
                                     **self._bias, **extra)
            if replay:
                job.result = res[0] if res else {"text": "", "timestamp": []}
            else:
                job.decoded = [None] * len(job.segments)
                job.progress(0.0, job.speech_s)
                if hook.asr_kw is not None:
                    self._asr_kw = hook.asr_kw
        except Exception as exc:  # noqa: BLE001  (stays with this job)
            job.error = exc
        finally:
            model.spk_model = None
            job.seconds += time.perf_counter() - t

    def _speakers(self, job: AsrJob) -> dict[str, Any]:
        """Attach the speaker model for ``job`` if it asked for labels; its generate
        arguments (``preset_spk_num`` for a known count)."""
        if job.speakers is None or self.spk is None:
            return {}
        self.model.spk_model, self.model.spk_kwargs = self.spk[0], dict(self.spk[1])
        return {"preset_spk_num": job.speakers} if isinstance(job.speakers, int) else {}

    def _whole(self, job: AsrJob) -> None:
        if not job.alive:
            return
        t = time.perf_counter()
        try:
            res = self.model.generate(input=str(job.audio), **self.generate_kw, **self._bias,
                                      **self._speakers(job))
            job.result = res[0] if res else {"text": "", "timestamp": []}
        except Exception as exc:  # noqa: BLE001  (stays with this job)
            job.error = exc
        finally:
            self.model.spk_model = None
        job.seconds += time.perf_counter() - t

    def _decode_all(self, jobs: list[AsrJob], stats: BatchStats) -> None:
        items = sorted(((len(seg), j, i) for j in jobs if j.alive
                        for i, seg in enumerate(j.segments)), key=lambda x: x[0])
        stats.segments = len(items)
        pos = 0
        while pos < len(items):
            # next batch: the shortest remaining live segments, funasr's bounds
            batch: list[tuple[int, AsrJob, int]] = []
            while pos < len(items):
                n, job, i = items[pos]
                if not job.alive:
                    pos += 1
                    continue
                length_ms = n * 1000 // SAMPLE_RATE
                if self.segments_per_call:
                    if len(batch) >= self.segments_per_call:
                        break
                elif batch and (length_ms >= self.threshold_ms
                                or length_ms * (len(batch) + 1) > self.max_ms):
                    break
                batch.append(items[pos])
                pos += 1
            if batch:
                self._decode(batch, stats)

    def _decode(self, batch: list[tuple[int, AsrJob, int]], stats: BatchStats, *,
                retried: bool = False) -> None:
        try:
            results = self._call_model([job.segments[i] for _, job, i in batch])
        except Exception as exc:  # noqa: BLE001  (narrowed down to its task below)
            if len(batch) == 1:
                batch[0][1].error = self._single_failure(batch[0], exc, retried)
                if batch[0][1].error is None:  # freed memory, try once more
                    self._decode(batch, stats, retried=True)
                return
            if is_oom(exc):
                stats.oom_splits += 1
                self._free_cuda()
                padded = max(n for n, _, _ in batch) * len(batch) * 1000 // SAMPLE_RATE
                self.max_ms = max(1, min(self.max_ms, padded // 2))
                log.warning("CUDA out of memory on a batch of %d segments (%.0f s padded); "
                            "splitting, batch bound now %.0f s", len(batch), padded / 1000,
                            self.max_ms / 1000)
            elif len({id(job) for _, job, _ in batch}) == 1:
                batch[0][1].error = exc
                return
            half = len(batch) // 2
            for part in (batch[:half], batch[half:]):
                live = [it for it in part if it[1].alive]
                if live:
                    self._decode(live, stats)
            return
        stats.calls += 1
        stats.sizes.append(len(batch))
        stats.padded_s.append(max(n for n, _, _ in batch) * len(batch) / SAMPLE_RATE)
        touched: dict[int, AsrJob] = {}
        for (n, job, i), res in zip(batch, results, strict=True):
            job.decoded[i] = res
            job.done_s += n / SAMPLE_RATE
            touched[id(job)] = job
        for job in touched.values():
            job.progress(min(job.done_s, job.speech_s), job.speech_s)

    def _single_failure(self, item: tuple[int, AsrJob, int], exc: Exception,
                        retried: bool) -> BaseException | None:
        """One segment alone failed: its task's error, or None to try it once more
        after freeing cached GPU memory (an OOM that a smaller batch did not cure)."""
        if not is_oom(exc):
            return exc
        if not retried:
            self._free_cuda()
            return None
        seconds = item[0] / SAMPLE_RATE
        return RetryableTaskError(
            f"the GPU ran out of memory decoding one {seconds:.0f} s speech segment alone; "
            "the task will be retried", type="OutOfMemory")

    def _call_model(self, segments: list[Any]) -> list[dict[str, Any]]:
        if self.decode_hook is not None:
            self.decode_hook(segments)
        kw = dict(self._asr_kw or {})
        kwargs = kw.pop("kwargs", None) or self.model.kwargs
        kwargs["batch_size"] = max(int(kwargs.get("batch_size") or 1), len(segments))
        kw.pop("model", None)
        with self.decode_scope():
            res = self.model.inference(segments, input_len=None, model=self.model.model,
                                       kwargs=kwargs, **kw)
        if not res:
            # funasr answers a batch whose segments all decode to no tokens with [];
            # per segment that is an empty text
            return [{"key": f"seg{i}", "text": "", "timestamp": []}
                    for i in range(len(segments))]
        if len(res) != len(segments):
            raise RuntimeError(f"the model returned {len(res)} results for "
                               f"{len(segments)} segments")
        return res

    def _free_cuda(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


__all__ = ["AsrJob", "BatchStats", "CrossTaskBatch", "is_oom"]

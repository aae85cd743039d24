"""Cross-task batching: the speech of several tasks decoded in shared batches.

funasr batches VAD segments only inside one file, so a queue of one-minute clips keeps
a GPU on small batches.  The worker sees the whole queue; for a group of ready tasks
(``TINGJI_ASR_BATCH_TASKS``) ``CrossTaskBatch.run`` does, on the model thread, through
the ``Engine`` protocol (``worker.engines.base``) and nothing else of the engine:

1. **split** – each task's audio into speech pieces (VAD, or VAD done ahead:
   ``worker.engines.torch.vad_pool``);
2. **decode** – the union of all tasks' pieces, sorted by length, in batches as the
   engine's ``limits`` allow: bounded by padded seconds (``TINGJI_BATCH_SIZE_S`` on a GPU,
   ``TINGJI_CPU_BATCH_SIZE_S`` on a CPU) for the torch engine, a few pieces of any length
   per call for the ONNX engine, which never pads.  A cancelled or failed task's pieces
   leave the remaining batches; a CUDA out-of-memory error splits the batch and lowers
   the bound; any other error is narrowed down by bisection to the one task it belongs
   to;
3. **assemble** – each task's pieces back into its transcript (punctuation, sentences,
   speakers).

Decoding is padding-invariant (``worker.engines.torch.paraformer``; the ONNX engine never
pads), so every task gets the text and timestamps it gets alone
(``tests/unit/test_engines.py``).  Errors stay with their task: one undecodable file
never fails the others.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.engines.base import Assembled, Engine, Split, plain
from worker.errors import RetryableTaskError, TaskCancelled
from worker.stages.media import SAMPLE_RATE  # what the normalized audio and engines use

log = logging.getLogger("tingji.worker.batching")


@dataclass(frozen=True)
class Resume:
    """A transcription interrupted after some of its pieces were decoded (a checkpoint,
    ``db.reads.Partial``): its audio is split again with the VAD it found then, which
    gives the same pieces in the same order, and only the others are decoded.  Used only
    when the same engine, models and hotwords made it (``key``)."""

    key: str
    pieces: int
    decoded: dict[int, Any]


@dataclass
class AsrJob:
    """One task's audio in a cross-task group; results are filled in on the model lane."""

    audio: Path
    progress: Callable[[float, float], None] = lambda done, total: None
    stop: threading.Event = field(default_factory=threading.Event)
    vad: list[dict[str, Any]] | None = None  # funasr's VAD result, when done ahead
    hotwords: tuple[str, ...] = ()  # the bias for SeACo-Paraformer; groups never mix sets
    speakers: int | str | None = None  # label speakers: "auto" or how many (None: don't)
    resume: Resume | None = None  # pieces decoded before an interruption
    keep: bool = False  # put each decoded piece in ``fresh`` too (for checkpoints)
    result: Assembled | None = None
    error: BaseException | None = None
    seconds: float = 0.0  # model-lane time attributed to this job
    speech_s: float = 0.0
    # set while the group runs
    split: Split | None = None
    decoded: list[Any] = field(default_factory=list)
    done_s: float = 0.0
    # set by the split, for checkpoints: what identifies this decoding, what the VAD
    # found, each piece's seconds, how many pieces came from ``resume``; ``fresh`` gets
    # (index, plain result) as pieces are decoded, taken by the checkpoint writer
    key: str = ""
    found_vad: list[dict[str, Any]] | None = None
    piece_s: list[float] = field(default_factory=list)
    resumed: int = 0
    fresh: deque[tuple[int, Any]] = field(default_factory=deque)

    @property
    def alive(self) -> bool:
        return self.error is None and not self.stop.is_set()

    @property
    def pieces(self) -> list[Any]:
        return self.split.pieces if self.split is not None else []

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
    # not done ahead, assemble is punctuation and sentences
    split_s: float = 0.0
    decode_s: float = 0.0
    assemble_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "segments": self.segments, "calls": self.calls,
                "max_batch": max(self.sizes, default=0),
                "mean_batch": round(sum(self.sizes) / len(self.sizes), 2) if self.sizes else 0,
                "oom_splits": self.oom_splits}


class CrossTaskBatch:
    """Runs one group of jobs through an engine, on the model lane."""

    def __init__(self, engine: Engine, *, key: str = "",
                 decode_hook: Callable[[list[Any]], None] | None = None) -> None:
        self.engine = engine
        self.key = key  # what changes a decoding: engine, device, models (the lane's)
        limits = engine.limits
        # padded milliseconds per batch (0: one piece per call, as funasr on a CPU)
        self.max_ms = max(0, limits.padded_s) * 1000
        # an engine that never pads takes this many pieces per call, of any length
        self.pieces_per_call = limits.pieces
        self.threshold_ms = limits.threshold_s * 1000
        self.decode_hook = decode_hook  # tests: called with each batch before decoding
        self._hotwords: tuple[str, ...] = ()

    def run(self, jobs: list[AsrJob]) -> BatchStats:
        """Decode a group.  Jobs with different hotwords never share a model call: the
        bias is one per call, so the group runs as one sub-group per hotword set, each
        giving every task the text it gets alone."""
        t0 = time.perf_counter()
        stats = BatchStats(tasks=len(jobs))
        by_bias: dict[tuple[str, ...], list[AsrJob]] = {}
        for job in jobs:
            by_bias.setdefault(job.hotwords, []).append(job)
        for hotwords, sub in by_bias.items():
            self._hotwords = hotwords
            self._run(sub, stats)
        stats.seconds = time.perf_counter() - t0
        return stats

    def _run(self, jobs: list[AsrJob], stats: BatchStats) -> None:
        t0 = time.perf_counter()
        for job in jobs:
            self._split(job)
        total = sum(len(p) for j in jobs if j.alive for p in j.pieces) / SAMPLE_RATE
        t1 = time.perf_counter()
        self._decode_all(jobs, stats)
        t2 = time.perf_counter()
        decode_s = t2 - t1
        for job in jobs:
            if job.alive:
                share = sum(len(p) for p in job.pieces) / SAMPLE_RATE / total if total else 0
                job.seconds += decode_s * share
                self._assemble(job)
            job.split = None  # the audio is no longer needed
        stats.split_s += t1 - t0
        stats.decode_s += decode_s
        stats.assemble_s += time.perf_counter() - t2

    def _split(self, job: AsrJob) -> None:
        if not job.alive:
            return
        t = time.perf_counter()
        try:
            resume = job.resume
            # resumed: job.vad is the VAD the checkpoint kept, so the pieces are the same
            split = self.engine.split(job.audio, self._hotwords, job.vad)
            job.split, job.speech_s = split, split.speech_s
            job.decoded = [None] * len(split.pieces)
            job.piece_s = [len(p) / SAMPLE_RATE for p in split.pieces]
            job.key = json_key(self.key, self._hotwords)
            job.found_vad = plain(split.vad) if split.vad is not None else None
            if resume is not None and resume.key == job.key \
                    and resume.pieces == len(split.pieces):
                for i, res in resume.decoded.items():
                    if 0 <= i < len(job.decoded):
                        job.decoded[i] = res
                        job.done_s += job.piece_s[i]
                        job.resumed += 1
            elif resume is not None:
                log.warning("a checkpoint of %s is not used: made by another engine, model "
                            "or hotwords, or its pieces differ (%d, now %d)", job.audio,
                            resume.pieces, len(split.pieces))
            job.progress(job.done_s, job.speech_s)
        except Exception as exc:  # noqa: BLE001  (stays with this job)
            job.error = exc
        finally:
            job.seconds += time.perf_counter() - t

    def _assemble(self, job: AsrJob) -> None:
        assert job.split is not None
        t = time.perf_counter()
        try:
            job.result = self.engine.assemble(job.audio, job.split, job.decoded,
                                              self._hotwords, job.speakers)
        except Exception as exc:  # noqa: BLE001  (stays with this job)
            job.error = exc
        finally:
            job.seconds += time.perf_counter() - t

    def _decode_all(self, jobs: list[AsrJob], stats: BatchStats) -> None:
        items = sorted(((len(p), j, i) for j in jobs if j.alive
                        for i, p in enumerate(j.pieces) if j.decoded[i] is None),
                       key=lambda x: x[0])
        stats.segments += len(items)
        pos = 0
        while pos < len(items):
            # next batch: the shortest remaining live pieces, within the engine's limits
            batch: list[tuple[int, AsrJob, int]] = []
            while pos < len(items):
                n, job, i = items[pos]
                if not job.alive:
                    pos += 1
                    continue
                length_ms = n * 1000 // SAMPLE_RATE
                if self.pieces_per_call:
                    if len(batch) >= self.pieces_per_call:
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
            results = self._call_model([job.pieces[i] for _, job, i in batch])
        except Exception as exc:  # noqa: BLE001  (narrowed down to its task below)
            if len(batch) == 1:
                batch[0][1].error = self._single_failure(batch[0], exc, retried)
                if batch[0][1].error is None:  # freed memory, try once more
                    self._decode(batch, stats, retried=True)
                return
            if self.engine.out_of_memory(exc):
                stats.oom_splits += 1
                self.engine.free_memory()
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
            if job.keep:
                job.fresh.append((i, plain(res)))
            touched[id(job)] = job
        for job in touched.values():
            job.progress(min(job.done_s, job.speech_s), job.speech_s)

    def _single_failure(self, item: tuple[int, AsrJob, int], exc: Exception,
                        retried: bool) -> BaseException | None:
        """One segment alone failed: its task's error, or None to try it once more
        after freeing cached GPU memory (an OOM that a smaller batch did not cure)."""
        if not self.engine.out_of_memory(exc):
            return exc
        if not retried:
            self.engine.free_memory()
            return None
        seconds = item[0] / SAMPLE_RATE
        return RetryableTaskError(
            f"the GPU ran out of memory decoding one {seconds:.0f} s speech segment alone; "
            "the task will be retried", type="OutOfMemory")

    def _call_model(self, pieces: list[Any]) -> list[Any]:
        if self.decode_hook is not None:
            self.decode_hook(pieces)
        results = self.engine.decode(pieces, self._hotwords)
        if len(results) != len(pieces):
            raise RuntimeError(f"the engine returned {len(results)} results for "
                               f"{len(pieces)} pieces")
        return results


def json_key(lane_key: str, hotwords: tuple[str, ...]) -> str:
    """What identifies a decoding: the lane's engine and models, and the hotwords."""
    return json.dumps([lane_key, list(hotwords)], ensure_ascii=False)


__all__ = ["AsrJob", "BatchStats", "CrossTaskBatch", "Resume"]

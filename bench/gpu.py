"""ASR throughput: tingji's cross-task batching against bare funasr, in one run.

    .venv/bin/python bench/gpu.py [--device auto] [--clips 20] [--clip-s 60] [--long-s 600]
                                  [--k 8] [--source SPEECH.wav] [--models DIR] [--json OUT]

Full-size random-weight SeACo-Paraformer (paraformer-zh dimensions, built here with
funasr's own classes) with the VAD and a ct-punc-sized punctuation model (random
weights, ``tests.helpers.tiny_funasr.build_bench_models``).  The same process runs

(a) ``--clips`` clips of ``--clip-s`` seconds (cut at different offsets from the source
    speech): bare ``AutoModel.generate`` one file at a time, then tingji's worker path
    (VAD in ``worker.engines.torch.vad_pool``'s processes when configured ->
    ``worker.scheduler.AsrScheduler`` ->
    ``AsrEngine`` -> ``worker.batching``) with every task's audio ready at once, at K=1
    and at K=``--k`` tasks per group;
(b) one clip of ``--long-s`` seconds: bare, then tingji (a group of one).

Each configuration runs ``--repeat`` times, interleaved with the others; for each it
prints the median x-realtime (audio seconds / wall seconds), peak GPU memory (CUDA), the
batch sizes the engine chose, how many transcripts (text, timestamps, sentences) equal
bare funasr's, and the model thread's time by phase (split with VAD, decode, assemble:
punctuation and sentences), so a change can be judged on a CPU too.

Identity: the reference is bare funasr decoding each VAD segment alone (one segment per
model call, no padding; on a CPU that is what bare funasr does anyway, on a GPU it is a
run with ``batch_size_s=0``).  For tingji at every K and for bare funasr with its own
batches it prints how many texts equal the reference's and the character error rate
against it; for K > 1, how many transcripts equal K=1's.  Bare funasr is stock: tingji's
changes apply to its own model instances and its own decode calls only.

Runs on the GPU machine of the device tool (see ``bench/gpu_device.sh``) or on a CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # not bench/ (it has queue.py)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SR = 16_000


def log(msg: str) -> None:
    print(msg, flush=True)


def make_clips(source: Path | None, work: Path, n: int, clip_s: float,
               long_s: float) -> tuple[list[Path], Path]:
    """``n`` clips of ``clip_s`` and one of ``long_s``, cut from ``source`` (looped as
    needed; made with espeak-ng when not given)."""
    import numpy as np
    import soundfile as sf

    if source is None:
        from tests.helpers import media as m
        source = m.speech_wav(work / "speech.wav", m.SENTENCES * 2, pause_s=1.5)
    audio, sr = sf.read(source, dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    assert sr == SR, f"{source}: {sr} Hz; give 16 kHz speech"
    need = int((long_s + clip_s * 2) * SR)
    audio = np.tile(audio, need // len(audio) + 1)
    clips = []
    step = max(1, int(SR * 7.3))  # different offsets: different segmentations
    for i in range(n):
        p = work / f"clip{i:02d}.wav"
        sf.write(p, audio[i * step:i * step + int(clip_s * SR)], SR)
        clips.append(p)
    long = work / "long.wav"
    sf.write(long, audio[:int(long_s * SR)], SR)
    return clips, long


class Gpu:
    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.cuda = device.startswith("cuda")

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        if not self.cuda:
            return None
        self.torch.cuda.synchronize()
        return round(self.torch.cuda.max_memory_allocated() / 2**30, 2)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


def duration(p: Path) -> float:
    import soundfile as sf

    return float(sf.info(str(p)).duration)


def bare_run(model: Any, files: list[Path], gpu: Gpu, batch_size_s: int
             ) -> tuple[float, list[Any]]:
    from worker.engines.base import assembled

    gpu.reset()
    t = time.perf_counter()
    out = [model.generate(input=str(f), sentence_timestamp=True, batch_size_s=batch_size_s)[0]
           for f in files]
    gpu.sync()
    return time.perf_counter() - t, [assembled(r) for r in out]


def tingji_run(engine: Any, files: list[Path], k: int, gpu: Gpu
               ) -> tuple[float, list[Any], list[Any]]:
    """Every file a task, all ready at once, through the worker's lane."""
    from worker.batching import AsrJob
    from worker.scheduler import AsrScheduler

    async def main() -> tuple[float, list[AsrJob], list[Any]]:
        jobs = [AsrJob(f) for f in files]
        vad_left = [len(jobs)]
        # the lane waits briefly for tasks whose VAD is still running, as for fetches
        lane = AsrScheduler(engine, k, fetching=lambda: vad_left[0])
        stats: list[Any] = []

        async def one(i: int, job: AsrJob) -> None:
            job.vad = await engine.detect_vad(job.audio)  # the pool's, or None: in the lane
            vad_left[0] -= 1
            lane.poke()
            ticket = await lane.enter(f"t{i}", duration(job.audio))
            ticket.submit(job)
            st = await ticket.result()
            if st is not None and all(st is not s for s in stats):
                stats.append(st)
        gpu.reset()
        t = time.perf_counter()
        await asyncio.gather(*(one(i, j) for i, j in enumerate(jobs)))
        gpu.sync()
        wall = time.perf_counter() - t
        await lane.close()
        return wall, jobs, stats
    wall, jobs, stats = asyncio.run(main())
    for j in jobs:
        if j.error is not None:
            raise RuntimeError(f"{j.audio}: {j.error!r}")
    return wall, [j.result for j in jobs], stats


def batch_sizes(stats: list[Any]) -> dict[str, Any]:
    sizes = [s for st in stats for s in st.sizes]
    padded = [p for st in stats for p in st.padded_s]
    return {"groups": len(stats), "tasks_per_group": [st.tasks for st in stats],
            "calls": len(sizes), "segments_per_call_median": statistics.median(sizes),
            "segments_per_call_max": max(sizes),
            "padded_s_per_call_median": round(statistics.median(padded), 1),
            "oom_splits": sum(st.oom_splits for st in stats)}


def same(a: list[Any], b: list[Any]) -> int:
    """Transcripts equal in text, sentences and their character timestamps."""
    return sum(1 for x, y in zip(a, b, strict=True) if x == y)


def against(out: list[Any], ref: list[Any]) -> dict[str, Any]:
    """Texts equal to the reference's, and the character error rate against it (edit
    distance over the reference's characters, whitespace ignored)."""
    from rapidfuzz.distance import Levenshtein

    def chars(r: Any) -> str:
        return "".join(r.text.split())
    pairs = [(chars(x), chars(y)) for x, y in zip(out, ref, strict=True)]
    total = sum(len(y) for _, y in pairs)
    errors = sum(Levenshtein.distance(x, y) for x, y in pairs)
    return {"text_equal": sum(1 for x, y in pairs if x == y), "of": len(pairs),
            "cer": round(errors / total, 4) if total else 0.0}


def phases(stats: list[Any]) -> dict[str, float]:
    """The model thread's seconds by phase over one run's groups."""
    return {p: round(sum(getattr(st, f"{p}_s") for st in stats), 2)
            for p in ("split", "decode", "assemble")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--clip-s", type=float, default=60.0)
    ap.add_argument("--long-s", type=float, default=600.0)
    ap.add_argument("--k", type=int, default=8, help="tasks per group for the batched run")
    ap.add_argument("--batch-size-s", type=int, default=300)
    ap.add_argument("--vad-processes", type=int,
                    help="VAD processes ahead of the lane (default: the worker's default)")
    ap.add_argument("--cpu-batch-size-s", type=int, default=60,
                    help="tingji's bound on a CPU (0: one segment per call, as funasr)")
    ap.add_argument("--source", type=Path, help="16 kHz speech to cut clips from")
    ap.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "tingji-bench")
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each configuration, interleaved; medians reported")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()

    t0 = time.perf_counter()
    from tests.helpers.tiny_funasr import build_bench_models  # torch: slow
    models = build_bench_models(str(a.models))
    work = Path(tempfile.mkdtemp(prefix="tingji-gpu-"))
    clips, long = make_clips(a.source, work, a.clips, a.clip_s, a.long_s)
    log(f"models and media ready in {time.perf_counter() - t0:.0f} s")

    from funasr import AutoModel

    from worker.asr import AsrConfig, AsrEngine, resolve_device
    from worker.batching import AsrJob
    from worker.main import default_vad_processes

    device = resolve_device(a.device)
    gpu = Gpu(device)
    ncpu = os.cpu_count() or 1
    vad_kwargs = {"max_single_segment_time": 60000}
    bare = AutoModel(model=models["asr"], vad_model=models["vad"], punc_model=models["punc"],
                     device=device, ncpu=ncpu, vad_kwargs=vad_kwargs, disable_update=True,
                     disable_pbar=True, log_level="ERROR")
    engine = AsrEngine(AsrConfig(model=models["asr"], vad_model=models["vad"],
                                 punc_model=models["punc"], device=device,
                                 batch_size_s=a.batch_size_s,
                                 cpu_batch_size_s=a.cpu_batch_size_s, ncpu=ncpu,
                                 vad_processes=(a.vad_processes if a.vad_processes is not None
                                                else default_vad_processes(device))))
    engine._load()
    if engine.vad_pool is not None:
        asyncio.run(engine.vad_pool.start())
    assert engine.batcher is not None
    # warm-up (CUDA context, kernels) on both
    bare.generate(input=str(clips[0]), sentence_timestamp=True)
    asyncio.run(engine.transcribe_many([AsrJob(clips[0])]))
    log(f"device {device}; VAD processes {engine.config.vad_processes}; "
        f"warm in {time.perf_counter() - t0:.0f} s")

    figures: dict[str, Any] = {"device": device, "clips": a.clips, "clip_s": a.clip_s,
                               "long_s": a.long_s, "k": a.k, "repeat": a.repeat,
                               "vad_processes": engine.config.vad_processes}

    def measure(name: str, files: list[Path], k: int | None,
                batch_size_s: int | None = None) -> None:
        """Run a configuration ``--repeat`` times (interleaved with the others by the
        caller) and keep its median wall time, peak memory, outputs and batch sizes."""
        if k is None:
            bs = a.batch_size_s if batch_size_s is None else batch_size_s
            wall, out = bare_run(bare, files, gpu, bs)
            stats: list[Any] = []
        else:
            wall, out, stats = tingji_run(engine, files, k, gpu)
        row = runs.setdefault(name, {"walls": [], "peak_gib": None})
        row["walls"].append(wall)
        row["peak_gib"] = max(filter(None, [row["peak_gib"], gpu.peak_gib()]), default=None)
        row["out"], row["stats"] = out, stats

    def reference(part: str, files: list[Path]) -> str:
        """The per-segment reference run of ``part`` (once; on a CPU, bare's own run)."""
        if gpu.cuda:
            measure(f"{part}_per_segment", files, None, batch_size_s=0)
            return f"{part}_per_segment"
        return f"{part}_bare"

    def report(name: str, audio_s: float, ref: str | None, label: str,
               seg: str | None = None, k1: str | None = None) -> None:
        row = runs[name]
        wall = statistics.median(row["walls"])
        fig = {"wall_s": round(wall, 2), "walls": [round(w, 2) for w in row["walls"]],
               "xrt": round(audio_s / wall, 1), "peak_gib": row["peak_gib"]}
        text = f"{label}: median {wall:.2f} s = {audio_s / wall:.1f}x realtime"
        if ref is not None:
            bare_wall = statistics.median(runs[ref]["walls"])
            fig["vs_bare"] = round(bare_wall / wall, 2)
            fig["same_output_as_bare"] = same(row["out"], runs[ref]["out"])
            fig["batches"] = batch_sizes(row["stats"])
            text += (f" ({fig['vs_bare']:.2f}x bare), same output as bare "
                     f"{fig['same_output_as_bare']}/{len(row['out'])}, batches {fig['batches']}")
        if seg is not None and seg != name:
            fig["vs_per_segment"] = against(row["out"], runs[seg]["out"])
            text += f", vs funasr per segment {fig['vs_per_segment']}"
        if k1 is not None and k1 != name:
            fig["same_as_k1"] = same(row["out"], runs[k1]["out"])
            text += f", same as K=1 {fig['same_as_k1']}/{len(row['out'])}"
        if row["stats"]:
            fig["model_thread_s"] = phases(row["stats"])
            text += f", model thread {fig['model_thread_s']}"
        figures[name] = fig
        log(f"{text}, peak GPU memory {row['peak_gib']} GiB, runs {fig['walls']}")

    runs: dict[str, dict[str, Any]] = {}
    audio_a = sum(duration(c) for c in clips)
    ks = sorted({1, a.k})
    for _ in range(a.repeat):
        measure("a_bare", clips, None)
        for k in ks:
            measure(f"a_tingji_k{k}", clips, k)
    seg_a = reference("a", clips)
    if seg_a != "a_bare":
        report(seg_a, audio_a, None, "(a) bare funasr, one segment per call (reference)")
    report("a_bare", audio_a, None, f"(a) bare funasr, {a.clips} x {a.clip_s:.0f} s one by one",
           seg=seg_a)
    for k in ks:
        report(f"a_tingji_k{k}", audio_a, "a_bare", f"(a) tingji K={k}", seg=seg_a,
               k1="a_tingji_k1")
    if not a.skip_long:
        audio_b = duration(long)
        for _ in range(a.repeat):
            measure("b_bare", [long], None)
            measure("b_tingji", [long], 1)
        seg_b = reference("b", [long])
        if seg_b != "b_bare":
            report(seg_b, audio_b, None, "(b) bare funasr, one segment per call (reference)")
        report("b_bare", audio_b, None, f"(b) bare funasr, one {audio_b:.0f} s clip", seg=seg_b)
        report("b_tingji", audio_b, "b_bare", "(b) tingji", seg=seg_b)
    log(json.dumps(figures))
    if a.json:
        a.json.write_text(json.dumps(figures, indent=1))
    engine.close()


if __name__ == "__main__":
    main()

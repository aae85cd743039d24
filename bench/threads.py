"""Model threads against cores (``TINGJI_ASR_THREADS``), in one run:

    .venv/bin/python bench/threads.py [--models DIR] [--clip-s 60] [--runs 3]

A clip transcribed by tingji's model lane (full-size random-weight SeACo-Paraformer,
fsmn-vad; the torch engine on the CPU), in processes of their own:
(1) one process alone, with every core's thread and with one thread;
(2) as many processes at once as there are cores (workers sharing a machine), each with
    every core's thread and each with one.
Printed per case: the median seconds of one transcription (over ``--runs`` after one to
warm up) and the CPU seconds the processes used, all runs together.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # not bench/ (it has queue.py)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

from tests.helpers import media as m  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

ONE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from worker.asr import AsrConfig, AsrEngine
from worker.batching import AsrJob
asr, vad, clip, threads, runs = sys.argv[2:7]
lane = AsrEngine(AsrConfig(model=asr, vad_model=vad, punc_model=None, device="cpu",
                           engine="torch", ncpu=int(threads)))
lane._load()
times = []
for _ in range(int(runs) + 1):  # the first warms up
    t = time.perf_counter()
    job = AsrJob(__import__("pathlib").Path(clip))
    lane._run_group([job])
    assert job.error is None, job.error
    times.append(time.perf_counter() - t)
print(json.dumps(times[1:]))
"""


def case(models: dict[str, str], clip: Path, threads: int, processes: int, runs: int
         ) -> tuple[float, float]:
    """(median seconds of one transcription over every process, CPU seconds used)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [subprocess.Popen([sys.executable, "-c", ONE, str(ROOT), models["asr"],
                               models["vad"], str(clip), str(threads), str(runs)],
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    times: list[float] = []
    for p in procs:
        out, _ = p.communicate(timeout=3600)
        assert p.returncode == 0, f"a process exited {p.returncode}"
        times += json.loads(out.strip().splitlines()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return statistics.median(times), cpu


def main() -> None:
    from tests.helpers.tiny_funasr import build_bench_models

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "tingji-bench-models"))
    ap.add_argument("--clip-s", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    models = build_bench_models(a.models)
    with tempfile.TemporaryDirectory() as tmp:
        speech = m.speech_wav(Path(tmp) / "speech.wav", m.SENTENCES)
        clip = m.convert(speech, Path(tmp) / "clip.wav", "-filter_complex",
                         "aloop=loop=-1:size=2e9", "-t", str(a.clip_s), "-ar", "16000",
                         "-ac", "1")
        print(f"{cores} cores; a {a.clip_s:.0f} s clip, full-size SeACo-Paraformer + fsmn-vad "
              f"(random weights), torch on the CPU; median of {a.runs} runs per process")
        print(f"{'processes':>9} {'threads each':>12} {'s per clip':>10} {'CPU s':>7}")
        for processes in (1, cores):
            for threads in (cores, 1):
                median, cpu = case(models, clip, threads, processes, a.runs)
                print(f"{processes:>9} {threads:>12} {median:>10.2f} {cpu:>7.1f}", flush=True)


if __name__ == "__main__":
    main()

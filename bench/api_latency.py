"""API latency while idle and while another process keeps a core busy, in one run.

    .venv/bin/python bench/api_latency.py [--n 400] [--busy worker|burn] [--full-models]

Starts a real `tingji serve` on a fresh SQLite data dir and measures p50/p99 of
GET /health, POST /api/v1/process/bilibili and GET /api/v1/task/{id}, sequentially
from one client, (a) idle and (b) while a second process keeps the CPU busy, in
alternating blocks (the busy process is paused with SIGSTOP for the idle blocks), so
both see the same database: `--busy burn` spins a CPU-burning process, `--busy worker`
runs a real `tingji worker` transcribing a long clip with the tiny model (with
`--full-models`: the full-size random-weight SeACo-Paraformer and CAM++ that
bench/pipeline.py uses, built once under --models).  Then
sustained submit throughput with 8 concurrent clients, next to the raw queue-layer
enqueue rate on the same machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder would shadow the stdlib's `queue` with bench/queue.py.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import asyncio  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402

from db.engine import make_engine  # noqa: E402
from db.models import TaskKind  # noqa: E402
from db.queue import NewTask, Queue, QueueConfig  # noqa: E402
from tests.helpers.procs import clean_env, start_server  # noqa: E402


def burn_group() -> None:
    os.setsid()  # its own process group, so SIGSTOP/SIGCONT reach it alone
    while True:
        pass


def start_busy_worker(url: str, env: dict[str, str], data: Path,  # noqa: ANN201
                      full_models: str | None = None):
    """A real `tingji worker` (tiny model, or the full-size ones) transcribing a
    17-minute clip, over and over."""
    import subprocess

    from tests.helpers import media as m
    from tests.helpers.procs import start

    if full_models:
        from tests.helpers.tiny_funasr import build_bench_models

        paths = build_bench_models(full_models)
        import logging

        logging.getLogger().setLevel(logging.WARNING)  # funasr's import set INFO
    else:
        tiny = data / "models"
        subprocess.run([sys.executable, "-m", "tests.helpers.tiny_funasr", str(tiny)],
                       check=True, capture_output=True,
                       cwd=Path(__file__).resolve().parents[1])
        paths = {k: str(tiny / k) for k in ("asr", "vad", "punc")}
    speech = m.speech_wav(data / "speech.wav", m.SENTENCES)
    long = m.convert(speech, data / "long.wav", "-filter_complex", "aloop=loop=24:size=2e9",
                     "-ar", "16000", "-ac", "1")
    wenv = {**env, "TINGJI_ASR_MODEL": paths["asr"], "TINGJI_VAD_MODEL": paths["vad"],
            "TINGJI_PUNC_MODEL": paths["punc"]}
    worker = start(["worker", "--preload"], wenv, data / "worker.log", new_session=True)
    with httpx.Client(base_url=url, timeout=60) as c:
        for _ in range(6):
            with open(long, "rb") as fh:
                c.post("/api/v1/process/audio", files={"file": ("long.wav", fh)},
                       data={"priority": "100"})
        deadline = time.monotonic() + 120
        while not c.get("/api/v1/queue").json()["processing"]:
            assert time.monotonic() < deadline, worker.output()
            time.sleep(0.5)
        time.sleep(3)  # well into transcription
    return worker.pid, worker.stop


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def measure(base: str, n: int, busy_pid: int, block: int = 25
            ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The same requests in alternating blocks: the busy process paused (SIGSTOP: idle)
    or running (SIGCONT: busy), so both conditions see the same database size."""
    names = ("GET /health", "POST bilibili", "GET task")
    idle: dict[str, list[float]] = {k: [] for k in names}
    busy: dict[str, list[float]] = {k: [] for k in names}
    with httpx.Client(base_url=base, timeout=30) as c:
        for _ in range(20):  # warm-up
            c.get("/health")
        i = 0
        while i < 2 * n:
            for out, sig in ((idle, signal.SIGSTOP), (busy, signal.SIGCONT)):
                os.killpg(busy_pid, sig)
                time.sleep(0.3)
                for _ in range(block):
                    t = time.perf_counter()
                    c.get("/health")
                    out["GET /health"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    r = c.post("/api/v1/process/bilibili",
                               json={"video_url": f"https://x.org/{i}.mp4"})
                    out["POST bilibili"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    c.get(f"/api/v1/task/{r.json()['task_id']}")
                    out["GET task"].append(time.perf_counter() - t)
                    i += 1
    os.killpg(busy_pid, signal.SIGCONT)
    return idle, busy


async def throughput(base: str, seconds: float, clients: int = 8) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            i = 0
            while time.perf_counter() < stop:
                r = await c.post("/api/v1/process/bilibili",
                                 json={"video_url": f"https://x.org/t{k}-{i}.mp4"})
                assert r.status_code == 202, r.text
                done += 1
                i += 1
    t = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return done / (time.perf_counter() - t)


async def raw_enqueue(url: str, n: int) -> float:
    engine = make_engine(url)
    q = Queue(engine, QueueConfig(max_pending=10**9))
    t = time.perf_counter()
    for i in range(n):
        await q.enqueue(NewTask(TaskKind.URL, {"video_url": f"https://x.org/r{i}"}))
    rate = n / (time.perf_counter() - t)
    await engine.dispose()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--busy", choices=["burn", "worker"], default="burn")
    ap.add_argument("--full-models", action="store_true",
                    help="--busy worker with the full-size ASR model (slow to build once)")
    ap.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "tingji-bench-models"))
    a = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="tingji-lat-"))
    env = clean_env(TINGJI_DATA_DIR=str(data), TINGJI_MAX_PENDING=str(10**9))
    server = start_server(env, data / "server.log")
    try:
        if a.busy == "burn":
            busy_proc = multiprocessing.Process(target=burn_group, daemon=True)
            busy_proc.start()
            busy_pid, stop_busy = busy_proc.pid, busy_proc.terminate
        else:
            busy_pid, stop_busy = start_busy_worker(
                server.url, env, data, a.models if a.full_models else None)
        time.sleep(1)
        try:
            idle, busy = measure(server.url, a.n, busy_pid or 0)
        finally:
            stop_busy()
        rate = asyncio.run(throughput(server.url, 10))
    finally:
        server.stop()
    raw_data = Path(tempfile.mkdtemp(prefix="tingji-raw-"))
    from db import migrate
    migrate.upgrade(f"sqlite:///{raw_data / 'tingji.db'}")
    raw = asyncio.run(raw_enqueue(f"sqlite:///{raw_data / 'tingji.db'}", 1000))

    print(f"{os.cpu_count()} cores; {a.n} sequential requests per endpoint; busy = {a.busy}"
          + (" (full-size ASR model)" if a.full_models and a.busy == "worker" else ""))
    print(f"{'endpoint':16} {'idle p50':>9} {'idle p99':>9} {'busy p50':>9} {'busy p99':>9}"
          f" {'p99 ratio':>9}   (ms)")
    for k in idle:
        i50, i99 = pct(idle[k], 50) * 1e3, pct(idle[k], 99) * 1e3
        b50, b99 = pct(busy[k], 50) * 1e3, pct(busy[k], 99) * 1e3
        print(f"{k:16} {i50:9.2f} {i99:9.2f} {b50:9.2f} {b99:9.2f} {b99 / i99:9.2f}")
    print(f"submit throughput, 8 concurrent HTTP clients: {rate:.0f} tasks/s")
    print(f"raw queue-layer enqueue (one coroutine, same machine): {raw:.0f} tasks/s")


if __name__ == "__main__":
    main()

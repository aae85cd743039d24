"""The worker against bare funasr, side by side in one run (CPU here; GPU if lent).

    .venv/bin/python bench/pipeline.py [--tasks 20] [--clip-min 10] [--models DIR]

(1) overhead: the same 10-minute clip through bare ``AutoModel.generate`` and through a
    tingji task (real server and worker processes), full-size random-weight
    SeACo-Paraformer (paraformer-zh dimensions) with the VAD and punctuation models;
(2) a batch of N tasks -> the worker's ``model_loads``;
(3) pipelining: that batch's wall time vs the sum of its stage times, with an LLM stub
    that takes 1 s per call (polish + summary on every task);
(4) model-lane duty cycle over the batch: seconds the model was transcribing / wall
    seconds from the first transcription's start to the last one's end;
(5) the cost of hotwords (20 of them) and of speaker labels (full-size CAM++,
    speakers=auto) per minute of audio: a two-voice clip as a plain task, with hotwords
    and with speakers, transcribe-stage seconds (median of 2 each), same worker.

(6) with ``--checkpoint-cost`` (and nothing else): what saving the decoded pieces
    inside the transcription costs, the same clip on workers with
    ``TINGJI_ASR_CHECKPOINT_S`` 0 (off), 60 (the default) and 5, transcribe-stage
    seconds, median of 3 each, rounds interleaved.

With ``--engine onnx`` the graphs are exported once (beside the models), and (1) runs on
three workers in turn, torch, ONNX fp32 and ONNX int8: transcribe stage against bare
funasr, the worker's resident memory, and the character error rate of fp32 against
torch and of int8 against fp32; (2)-(5) then run on the int8 worker.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # not bench/ (it has queue.py)

import argparse  # noqa: E402
import json  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402

from tests.helpers import media as m  # noqa: E402
from tests.helpers.procs import Proc, clean_env, start, start_server  # noqa: E402
from tests.helpers.servers import LlmStub, StubBehaviour  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


BARE = r"""
import json, os, sys, time
from funasr import AutoModel
asr, vad, punc, clip, device, bs = sys.argv[1:7]
t = time.perf_counter()
# ncpu as the worker sets it (funasr's default of 4 threads oversubscribes 2 cores)
m = AutoModel(model=asr, vad_model=vad, punc_model=punc, device=device, ncpu=os.cpu_count(),
              vad_kwargs={"max_single_segment_time": 60000, "max_end_silence_time": 800},
              disable_update=True, disable_pbar=True, log_level="ERROR")
load = time.perf_counter() - t
runs = []
for _ in range(2):
    t = time.perf_counter()
    r = m.generate(input=clip, sentence_timestamp=True, batch_size_s=int(bs))
    runs.append(time.perf_counter() - t)
print(json.dumps({"load": load, "runs": runs, "sentences": len(r[0].get("sentence_info", []))}))
"""


def wait_done(http: object, tids: list[str], timeout: float) -> list[dict]:
    import httpx
    assert isinstance(http, httpx.Client)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = [http.get(f"/api/v1/task/{t}").json() for t in tids]
        if all(t["status"] in ("completed", "failed", "cancelled") for t in tasks):
            return tasks
        time.sleep(0.5)
    raise TimeoutError("tasks did not finish")


def start_worker(http: object, env: dict[str, str], log: Path) -> Proc:
    """A worker with the model loaded (``--preload``); it is the newest in the list."""
    import httpx
    assert isinstance(http, httpx.Client)
    worker = start(["worker", "--preload"], env, log)
    deadline = time.monotonic() + 300
    while not any(w["model_loads"] and w["pid"] == worker.pid
                  for w in http.get("/api/v1/queue").json()["workers"]):
        assert time.monotonic() < deadline and worker.popen.poll() is None, worker.output()
        time.sleep(0.5)
    return worker


def clip_runs(http: object, clip: Path, n: int = 2) -> dict:
    """The clip as a task (no LLM) n times: transcribe-stage and claim-to-complete
    seconds, and the text."""
    import httpx
    assert isinstance(http, httpx.Client)
    out: dict = {"asr": [], "task": [], "text": ""}
    for _ in range(n):
        with open(clip, "rb") as fh:
            tid = http.post("/api/v1/process/audio", files={"file": ("clip.wav", fh)},
                            data={"polish": "false"}).json()["task_id"]
        [task] = wait_done(http, [tid], 1800)
        assert task["status"] == "completed", task
        out["task"].append(ts(task["completed_at"]) - ts(task["started_at"]))
        out["asr"].append(task["result"]["stage_seconds"]["transcribe"])
        out["text"] = task["result"]["text"]
    return out


def rss_mb(pid: int) -> tuple[float, float]:
    """The process's peak resident set (VmHWM; for the torch engine that is while funasr
    loads the torch checkpoints) and its resident set now (VmRSS), in MiB."""
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(status["VmHWM"].split()[0]) / 1024, int(status["VmRSS"].split()[0]) / 1024)


def report_engines(clip_s: float, bare_s: float, runs: dict[str, dict]) -> None:
    """Section (1) by engine: transcribe stage against bare funasr, the worker's peak
    RSS, and the int8 graphs' character error rate against the fp32 ones."""
    from rapidfuzz.distance import Levenshtein

    print(f"(1) by engine, {clip_s / 60:.1f}-min clip, bare funasr (torch, stock) "
          f"{bare_s:.2f} s:")
    for name, r in runs.items():
        med = statistics.median(r["asr"])
        line = (f"    {name:<9} transcribe stage median {med:6.2f} s = {med / bare_s:.3f}x "
                f"bare ({bare_s / med:.2f}x faster); worker RSS peak "
                f"{r['peak_rss_mb']:.0f} MiB, after the runs {r['rss_mb']:.0f} MiB")
        if name == "onnx int8" and "onnx fp32" in runs:
            ref = "".join(runs["onnx fp32"]["text"].split())
            got = "".join(r["text"].split())
            line += (f"; CER against fp32 {Levenshtein.distance(got, ref) / max(1, len(ref)):.4f}"
                     f" over {len(ref)} characters")
        if name == "onnx fp32":
            ref = "".join(runs["torch"]["text"].split())
            got = "".join(r["text"].split())
            line += (f"; CER against torch {Levenshtein.distance(got, ref) / max(1, len(ref)):.4f}"
                     " (random weights: flat logits, near-ties flip)")
        print(line)


def ts(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--clip-min", type=float, default=10.0)
    ap.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "tingji-bench-models"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--extras-min", type=float, default=3.0,
                    help="length of the two-voice clip for (5)")
    ap.add_argument("--skip-batch", action="store_true", help="skip (2)-(4)")
    ap.add_argument("--checkpoint-cost", action="store_true", help="run (6) only")
    ap.add_argument("--engine", choices=("torch", "onnx"), default="torch",
                    help="onnx: also export the graphs and run (1) on the ONNX engine, fp32 "
                    "and int8; (2)-(5) then run on onnx int8")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tingji-pipe-"))
    from tests.helpers.tiny_funasr import build_bench_models  # torch: slow
    models = build_bench_models(str(a.models))
    import logging
    logging.getLogger().setLevel(logging.WARNING)  # funasr's import set INFO (httpx's lines)
    speech = m.speech_wav(work / "speech.wav", m.SENTENCES)
    loops = max(0, int(a.clip_min * 60 / 41.2) - 1)
    clip = m.convert(speech, work / "clip.wav", "-filter_complex",
                     f"aloop=loop={loops}:size=2e9", "-ar", "16000", "-ac", "1")
    import wave
    with wave.open(str(clip)) as w:
        clip_s = w.getnframes() / w.getframerate()

    # (1a) bare funasr, its own process (loads once, generate twice: median of 2)
    bare = json.loads(subprocess.run(
        [sys.executable, "-c", BARE, models["asr"], models["vad"], models["punc"], str(clip),
         a.device, "300"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip().splitlines()[-1])
    bare_s = statistics.median(bare["runs"])

    stub = LlmStub(StubBehaviour(delay_s=1.0))
    env = clean_env(TINGJI_DATA_DIR=str(work / "data"), TINGJI_ASR_MODEL=models["asr"],
                    TINGJI_VAD_MODEL=models["vad"], TINGJI_PUNC_MODEL=models["punc"],
                    TINGJI_SPK_MODEL=models["spk"],
                    TINGJI_VAD_MAX_END_SILENCE_MS="800", TINGJI_DEVICE=a.device,
                    TINGJI_LLM_BASE_URL=stub.base_url, TINGJI_LLM_MODEL="stub")
    engines = [("torch", True)]
    if a.engine == "onnx":
        # the graphs, exported once beside the models (torch is needed for this only)
        env["TINGJI_DATA_DIR"] = str(Path(a.models) / "data")
        done = subprocess.run([str(Path(sys.executable).with_name("tingji")), "models",
                               "export-onnx", "--quantize"], env=env, capture_output=True,
                              text=True, cwd=ROOT)
        assert done.returncode == 0, done.stdout + done.stderr
        print(done.stdout.strip())
        engines += [("onnx", False), ("onnx", True)]
    server = start_server(env, work / "server.log")
    http = httpx.Client(base_url=server.url, timeout=60)
    worker: Proc | None = None
    if a.checkpoint_cost:
        try:
            return checkpoint_cost(http, env, clip, clip_s, work)
        finally:
            server.stop()
            stub.close()
    try:
        # (1b) the same clip as a tingji task (no LLM), twice per engine: median
        runs: dict[str, dict] = {}
        for engine, int8 in engines:
            name = engine if engine == "torch" else f"onnx {'int8' if int8 else 'fp32'}"
            worker = start_worker(http, env | {"TINGJI_ENGINE": engine,
                                               "TINGJI_ONNX_INT8": str(int8).lower()},
                                  work / f"worker-{engine}-{int8}.log")
            runs[name] = clip_runs(http, clip)
            runs[name]["peak_rss_mb"], runs[name]["rss_mb"] = rss_mb(worker.pid)
            print(f"{name}: transcribe stage {runs[name]['asr']} s, peak RSS "
                  f"{runs[name]['peak_rss_mb']:.0f} MiB", flush=True)
            if (engine, int8) != engines[-1]:
                worker.stop()
        chosen = runs["torch" if a.engine == "torch" else "onnx int8"]  # (1) to (5)
        tingji_asr_s, tingji_task_s = chosen["asr"], chosen["task"]

        # (5) hotwords and speakers: the same two-voice clip three ways
        dialogue = m.speech_wav(work / "dialogue.wav", m.SENTENCES, pause_s=0.9,
                                voices=("cmn", "cmn+f4"))
        d_loops = max(0, int(a.extras_min * 60 / 40) - 1)
        two = m.convert(dialogue, work / "two.wav", "-filter_complex",
                        f"aloop=loop={d_loops}:size=2e9", "-ar", "16000", "-ac", "1")
        words = ",".join(["听记", "转写", "傅里叶", "拉普拉斯", "张老师", "李同学", "语音识别",
                          "卷积", "注意力", "梯度下降", "向量", "矩阵", "特征值", "概率",
                          "贝叶斯", "马尔可夫", "熵", "信息论", "编码器", "解码器"])
        extras: dict[str, list[float]] = {"plain": [], "hotwords": [], "speakers": []}
        ways: list[tuple[str, dict[str, str]]] = [("plain", {}),
                                                  ("hotwords", {"hotwords": words}),
                                                  ("speakers", {"speakers": "auto"})]
        two_s = 0.0
        for _ in range(2):
            for name, fields in ways:
                with open(two, "rb") as fh:
                    tid = http.post("/api/v1/process/audio", files={"file": ("two.wav", fh)},
                                    data={"polish": "false", **fields}).json()["task_id"]
                [task] = wait_done(http, [tid], 1800)
                assert task["status"] == "completed", task
                extras[name].append(task["result"]["stage_seconds"]["transcribe"])
                two_s = task["result"]["duration_s"]
        if a.skip_batch:
            report(a, clip_s, bare_s, tingji_asr_s, tingji_task_s, extras, two_s)
            return report_engines(clip_s, bare_s, runs)

        # (2)-(4) a batch of N tasks with polish and summary through the 1 s stub
        t0 = time.time()
        tids = []
        for _ in range(a.tasks):
            with open(speech, "rb") as fh:
                tids.append(http.post("/api/v1/process/audio",
                                      files={"file": ("speech.wav", fh)},
                                      data={"polish": "true", "summarize": "true"}
                                      ).json()["task_id"])
        tasks = wait_done(http, tids, 3600)
        assert all(t["status"] == "completed" for t in tasks), [t["error"] for t in tasks]
        wall = max(ts(t["completed_at"]) for t in tasks) - t0
        stage_sum = sum(sum(t["result"]["stage_seconds"].values()) for t in tasks)
        loads = [w["model_loads"] for w in http.get("/api/v1/queue").json()["workers"]
                 if w["pid"] == worker.pid]
        db = sqlite3.connect(work / "data" / "tingji.db")
        marks = ",".join("?" * len(tids))
        rows = db.execute(
            "SELECT task_id, event, at FROM task_events WHERE event LIKE 'stage_%' AND "
            f"json_extract(detail, '$.stage') = 'transcribe' AND task_id IN ({marks}) "
            "ORDER BY id", tids).fetchall()
        starts = [ts(r[2].replace(" ", "T") + "+00:00") for r in rows if r[1] == "stage_started"]
        ends = [ts(r[2].replace(" ", "T") + "+00:00") for r in rows if r[1] == "stage_completed"]
        busy = sum(t["result"]["stage_seconds"]["transcribe"] for t in tasks)
        span = max(ends) - min(starts)
        audio = sum(t["result"]["duration_s"] for t in tasks)
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
        stub.close()
    report(a, clip_s, bare_s, tingji_asr_s, tingji_task_s, extras, two_s)
    report_engines(clip_s, bare_s, runs)
    print(f"(2) {a.tasks} tasks: worker model_loads = {loads}")
    print(f"(3) batch wall {wall:.1f} s vs sum of stage times {stage_sum:.1f} s "
          f"(ratio {wall / stage_sum:.2f}); {audio / wall:.1f}x realtime over the batch; "
          f"LLM calls {len(stub.b.calls)}")
    print(f"(4) model lane: busy {busy:.1f} s over {span:.1f} s -> duty cycle "
          f"{busy / span:.3f}")


def checkpoint_cost(http: object, env: dict[str, str], clip: Path, clip_s: float,
                    work: Path) -> None:
    """(6): the transcribe stage with in-transcription checkpoints off, every 60 s and
    every 5 s; one worker per setting, three rounds, the settings' order rotated."""
    settings, rounds = ("0", "60", "5"), 3
    seconds: dict[str, list[float]] = {s: [] for s in settings}
    for r in range(rounds):
        for every in settings[r % 3:] + settings[:r % 3]:
            worker = start_worker(http, env | {"TINGJI_ASR_CHECKPOINT_S": every,
                                               "TINGJI_REUSE": "0"},
                                  work / f"worker-cp{every}-{r}.log")
            try:
                seconds[every] += clip_runs(http, clip, n=1)["asr"]
            finally:
                worker.stop()
    off = statistics.median(seconds["0"])
    print(f"(6) checkpoints inside transcription, {clip_s / 60:.1f}-minute clip, transcribe "
          f"stage, median of {rounds}:")
    for every in settings:
        med = statistics.median(seconds[every])
        print(f"    TINGJI_ASR_CHECKPOINT_S={every:>2}: {med:7.2f} s  "
              f"({(med / off - 1) * 100:+.1f}% vs off)  runs {seconds[every]}")


def report(a: argparse.Namespace, clip_s: float, bare_s: float, tingji_asr_s: list[float],
           tingji_task_s: list[float], extras: dict[str, list[float]], two_s: float) -> None:
    print(f"device {a.device}; full-size SeACo-Paraformer ASR (random weights) + VAD + punc")
    print(f"(1) {clip_s / 60:.1f}-min clip: bare generate median {bare_s:.2f} s "
          f"(RTF {bare_s / clip_s:.4f}, {clip_s / bare_s:.0f}x realtime); tingji transcribe "
          f"stage median {statistics.median(tingji_asr_s):.2f} s, whole task (claim to "
          f"complete) median {statistics.median(tingji_task_s):.2f} s")
    print(f"    overhead ratio: transcribe stage / bare = "
          f"{statistics.median(tingji_asr_s) / bare_s:.3f}; whole task / bare = "
          f"{statistics.median(tingji_task_s) / bare_s:.3f}")
    plain = statistics.median(extras["plain"])
    print(f"(5) {two_s / 60:.1f}-min two-voice clip, transcribe stage per minute of audio "
          f"(median of 2):")
    for name in ("plain", "hotwords", "speakers"):
        med = statistics.median(extras[name])
        print(f"    {name:<9} {med / (two_s / 60):6.2f} s/min  ({med / plain:.2f}x plain)")


if __name__ == "__main__":
    main()

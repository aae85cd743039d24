"""`tingji run`, the README's one command: API + worker as children, a crashed worker
restarted, Ctrl-C stopping both cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.procs import TINGJI, clean_env, free_port

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def _wait(cond, timeout: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = cond()
        except httpx.HTTPError:
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out: {what}")


def test_run_restarts_a_dead_worker_and_stops_cleanly_on_ctrl_c(
        tmp_path: Path, tiny_models: dict[str, str], media: dict[str, Path]) -> None:
    port = free_port()
    env = clean_env(TINGJI_DATA_DIR=str(tmp_path / "data"), TINGJI_PORT=str(port),
                    TINGJI_ASR_MODEL=tiny_models["asr"], TINGJI_VAD_MODEL=tiny_models["vad"],
                    TINGJI_PUNC_MODEL=tiny_models["punc"], TINGJI_VAD_MAX_END_SILENCE_MS="800",
                    TINGJI_LEASE_SECONDS="10", TINGJI_HEARTBEAT_SECONDS="0.5")
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115
    # its own process group, as a terminal's Ctrl-C reaches the whole group
    run = subprocess.Popen([TINGJI, "run"], env=env, cwd=tmp_path, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        http = httpx.Client(base_url=base, timeout=10)
        workers = _wait(lambda: [w for w in http.get("/api/v1/queue").json()["workers"]
                                 if w["alive"] and w["model_loads"] == 1], 90,
                        "the worker did not come up")
        first_pid = workers[0]["pid"]
        with open(media["speech"], "rb") as fh:
            tid = http.post("/api/v1/process/audio",
                            files={"file": ("speech.wav", fh)}).json()["task_id"]
        _wait(lambda: http.get(f"/api/v1/task/{tid}").json()["status"] == "completed", 90,
              "the first task did not complete")

        os.kill(first_pid, signal.SIGKILL)  # the worker crashes: run starts another
        _wait(lambda: [w for w in http.get("/api/v1/queue").json()["workers"]
                       if w["alive"] and w["pid"] != first_pid and w["model_loads"] == 1],
              90, "no new worker after the crash")
        with open(media["mp3"], "rb") as fh:
            tid2 = http.post("/api/v1/process/audio",
                             files={"file": ("talk.mp3", fh)}).json()["task_id"]
        _wait(lambda: http.get(f"/api/v1/task/{tid2}").json()["status"] == "completed", 90,
              "the task after the restart did not complete")

        children = _children(run.pid)
        assert len(children) == 2
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C
        assert run.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or \
                Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        with pytest.raises(httpx.ConnectError):
            httpx.get(base + "/health", timeout=2)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        log.close()
    # every worker row says it stopped or was recovered: none is left looking alive
    import sqlite3
    db = sqlite3.connect(tmp_path / "data" / "tingji.db")
    assert db.execute("SELECT count(*) FROM tasks WHERE status = 'processing'").fetchone() == (0,)

"""A whole tingji installation for integration tests: a data dir, the API server and
workers as real subprocesses, with the tiny random-weight models."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.procs import TINGJI, Proc, clean_env, start, start_server

LOAD_CEILING_S = 240.0  # a worker that neither loads nor exits by then is hung


class Stack:
    """A data dir, an API server and workers started as subprocesses."""

    def __init__(self, root: Path, models: dict[str, str], **env: str) -> None:
        self.root = root
        self.data = root / "data"
        self.env = clean_env(**{
            "TINGJI_DATA_DIR": str(self.data), "TINGJI_ASR_MODEL": models["asr"],
            "TINGJI_VAD_MODEL": models["vad"], "TINGJI_PUNC_MODEL": models["punc"],
            "TINGJI_SPK_MODEL": models["spk"],
            "TINGJI_VAD_MAX_END_SILENCE_MS": "800", "TINGJI_LEASE_SECONDS": "10",
            "TINGJI_HEARTBEAT_SECONDS": "0.5", "TINGJI_RETRY_BACKOFF_SECONDS": "0.5",
            "TINGJI_DRAIN_SECONDS": "20",
            # the tests' media and LLM servers are on 127.0.0.1 (test_security keeps the
            # egress policy on)
            "TINGJI_ALLOW_PRIVATE_URLS": "1", **env})
        self.server = start_server(self.env, root / "server.log")
        self.http = httpx.Client(base_url=self.server.url, timeout=30)
        self.workers: list[Proc] = []

    def worker(self, *, preload: bool = True, wait_loaded: bool = True,
               exe: str = TINGJI) -> Proc:
        n = len(self.workers)
        proc = start(["worker", *(["--preload"] if preload else [])], self.env,
                     self.root / f"worker{n}.log", exe=exe)
        self.workers.append(proc)
        if preload and wait_loaded:
            def loaded() -> bool:
                if proc.popen.poll() is not None:  # no use waiting: say why at once
                    raise AssertionError(f"worker {proc.pid} exited {proc.popen.returncode} "
                                         f"before loading its model:\n{proc.output()}")
                return any(w["pid"] == proc.pid and w["model_loads"] == 1
                           for w in self.http.get("/api/v1/queue").json()["workers"])
            # the readiness signal is the load itself: a busy machine's torch import
            # took 60-95 s, so the ceiling is only there to end a hung test
            self.wait(loaded, LOAD_CEILING_S,
                      f"worker {proc.pid} did not load its model:\n{proc.output()}")
        return proc

    def wait(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = cond()
            if got:
                return got
            time.sleep(0.1)
        raise AssertionError(f"timed out: {what}\n" + "\n".join(
            w.output()[-3000:] for w in self.workers))

    def pause_when(self, proc: Proc, cond: Callable[[], Any], timeout: float,
                   what: str, step_s: float = 0.05) -> Any:
        """Wait for ``cond`` and leave ``proc`` stopped (SIGSTOP) where it holds.

        The process runs in steps of ``step_s`` and ``cond`` is read only while it is
        stopped, so a worker that moves faster than the test polls cannot pass the state
        between two looks.  The caller signals it (``Proc.kill`` lets a stopped process
        obey) or lets it go on (``Proc.resume``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGSTOP)
            looked = time.monotonic()
            _stopped(proc.pid)
            got = cond()
            if got:
                return got
            proc.resume()
            # at least as long running as stopped: a loaded machine's slow looks must not
            # starve the worker (and its heartbeats) into timeouts of their own
            time.sleep(max(step_s, time.monotonic() - looked))
        raise AssertionError(f"timed out: {what} (exit {proc.popen.returncode})\n"
                             + proc.output()[-3000:])

    def work_files_removed(self, tid: str, data: Path | None = None, *,
                           upload: bool = False) -> None:
        """The worker removes a finished task's work files (and a completed upload) just
        after it writes the outcome (only then does it know which outcome won), so a test
        that saw the status waits a moment for them."""
        data = data or self.data
        work, uploads = data / "work" / tid, data / "uploads"

        def gone() -> bool:
            return not work.exists() and not (upload and uploads.exists()
                                              and any(uploads.iterdir()))
        self.wait(gone, 10, f"{work} (or an upload in {uploads}) left behind")

    def upload(self, path: Path, **fields: str) -> str:
        with open(path, "rb") as fh:
            resp = self.http.post("/api/v1/process/audio", files={"file": (path.name, fh)},
                                  data=fields)
        assert resp.status_code == 202, resp.text
        return str(resp.json()["task_id"])

    def submit_url(self, url: str, **opts: Any) -> str:
        resp = self.http.post("/api/v1/process/bilibili", json={"video_url": url, **opts})
        assert resp.status_code == 202, resp.text
        return str(resp.json()["task_id"])

    def task(self, tid: str) -> dict[str, Any]:
        return self.http.get(f"/api/v1/task/{tid}").json()  # type: ignore[no-any-return]

    def events(self, tid: str) -> list[dict[str, Any]]:
        return self.http.get(f"/api/v1/task/{tid}/events").json()  # type: ignore[no-any-return]

    def finished(self, tid: str, timeout: float = 120) -> dict[str, Any]:
        return self.wait(lambda: (t := self.task(tid))["status"] in
                         ("completed", "failed", "cancelled") and t, timeout,
                         f"task {tid} did not finish")

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.server.stop()
        self.http.close()

    def cli(self, *args: str, timeout: float = 180, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run the real `tingji` executable against this stack's server."""
        env = {**self.env, "TINGJI_URL": self.server.url}
        return subprocess.run([TINGJI, *args], env=env, cwd=cwd or self.root,
                              capture_output=True, text=True, timeout=timeout)


def _stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until the kernel shows ``pid`` stopped: a signal is delivered, not obeyed, by
    the time ``kill`` returns, and a thread on another core runs on for a moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("T", "t", "Z"):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop")

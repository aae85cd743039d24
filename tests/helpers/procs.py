"""Start tingji's real processes (API server, worker) for integration tests."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
TINGJI = str(Path(sys.executable).with_name("tingji"))


def _port_block() -> range:
    """Ports for this test process's servers: below Linux's ephemeral range (32768 up), so
    no outgoing connection holds one, and a block of its own per pytest-xdist process, so
    two processes never pick the same port between choosing it and the server binding it
    (which ``bind(0)`` then close cannot promise)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker[2:]) if worker[2:].isdigit() else 0
    start = 10000 + (n % 8) * 2800
    return range(start, start + 2800)


_PORTS = _port_block()
_turns = itertools.count(os.getpid())  # where in the block this process starts


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, for a server started next; each call
    gives another one (a restarted server reuses its port on purpose)."""
    for _ in range(len(_PORTS)):
        port = _PORTS[next(_turns) % len(_PORTS)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS}")


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without its ``TINGJI_*`` settings, plus
    ``overrides``.  Models compute on one thread: the suite runs two test files at once,
    each with servers and workers, on two cores, and threads that outnumber the cores
    spin (two workers of two threads each took 4.5 times as long as of one; bench/threads.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINGJI_")}
    env.update({"TINGJI_ASR_THREADS": "1", **overrides})
    return env


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self, sig: int = signal.SIGKILL, wait: float | None = None) -> None:
        """Send ``sig`` and wait for the exit (``wait`` seconds); SIGKILL after the wait.
        A graceful stop may drain a task for up to ``TINGJI_DRAIN_SECONDS`` and retry its
        last write: by default it gets 90 s, on a machine that runs two test files."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            self.resume()  # one that ``Stack.pause_when`` stopped obeys it now
        try:
            self.popen.wait(timeout=wait or (90 if sig == signal.SIGTERM else 30))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def resume(self) -> None:
        """Let a stopped process (SIGSTOP) go on."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)

    def stop(self) -> int | None:
        self.kill(signal.SIGTERM)
        return self.popen.returncode


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None,
          new_session: bool = False, exe: str = TINGJI) -> Proc:
    """``tingji ARGS`` (``exe``: another installation's ``tingji``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "ab")  # noqa: SIM115  (the child owns it)
    popen = subprocess.Popen([exe, *args], env=env, cwd=cwd or ROOT, stdout=fh,
                             stderr=subprocess.STDOUT, start_new_session=new_session)
    fh.close()
    return Proc(popen, log, env=env)


def start_server(env: dict[str, str], log: Path, *, port: int | None = None,
                 timeout: float = 180) -> Proc:
    port = port or free_port()
    proc = start(["serve", "--port", str(port)], env, log)
    proc.url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"server exited {proc.popen.returncode}:\n{proc.output()}")
        try:
            if httpx.get(proc.url + "/health", timeout=2).status_code in (200, 503):
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{proc.output()}")

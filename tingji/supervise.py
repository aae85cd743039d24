"""``tingji run``: the API and one worker as child processes.

Ctrl-C (or SIGTERM) stops both cleanly: the worker drains or hands back its task.
A worker that dies (a crash, the OOM killer) is restarted, with a pause that grows
when it keeps dying; one that exits because it cannot work at all (the model does not
load) stops the service; one that recycled itself (its memory grew past
TINGJI_WORKER_MAX_RSS_MB, ``worker.recycle``) is restarted at once.  If the API exits,
the worker is stopped too.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("tingji.run")
EXIT_FATAL = 3  # a worker that cannot work at all (its model does not load): do not restart
EXIT_RECYCLE = 75  # a worker whose memory grew too large (worker.recycle): restart at once


def _tingji() -> list[str]:
    exe = Path(sys.executable).with_name("tingji")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tingji.cli"]


def supervise(host: str, port: int, *, preload: bool = True) -> int:
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server = subprocess.Popen([*_tingji(), "serve", "--host", host, "--port", str(port)])
    worker_cmd = [*_tingji(), "worker", *(["--preload"] if preload else [])]
    worker = subprocess.Popen(worker_cmd)
    restarts: list[float] = []
    code = 0
    try:
        while not stopping:
            time.sleep(0.5)
            if stopping:  # Ctrl-C reached the children too: their exits are expected
                break
            if server.poll() is not None:
                log.error("the API exited with code %s; stopping", server.returncode)
                code = server.returncode or 1
                break
            if worker.poll() is not None:
                if worker.returncode == EXIT_FATAL:
                    log.error("the worker cannot start (see above); stopping")
                    code = EXIT_FATAL
                    break
                if worker.returncode == EXIT_RECYCLE:  # it asked to be restarted: now
                    log.info("the worker recycled itself (TINGJI_WORKER_MAX_RSS_MB); "
                             "starting a new one")
                    worker = subprocess.Popen(worker_cmd)
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 600] + [now]
                pause = min(60.0, 2.0 ** (len(restarts) - 1))
                log.warning("the worker exited with code %s; restarting in %.0f s",
                            worker.returncode, pause)
                deadline = time.monotonic() + pause
                while not stopping and time.monotonic() < deadline:
                    time.sleep(0.2)
                if not stopping:
                    worker = subprocess.Popen(worker_cmd)
    finally:
        for proc in (worker, server):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (worker, server):
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return code

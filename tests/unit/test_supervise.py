"""``tingji run``'s supervision (``tingji.supervise``), with stand-in children: a worker
that recycled itself (exit 75) is restarted at once; one that crashed, after a pause;
one that cannot work (exit 3) stops the service."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path


def _supervise(tmp_path: Path, worker_exits: list[int]) -> tuple[int, list[float], float]:
    """Run ``supervise`` in its own process, its ``tingji`` a script that serves by
    sleeping and works by exiting with the next of ``worker_exits``."""
    starts = tmp_path / "starts"
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        starts = Path({str(starts)!r})
        if sys.argv[1] == "serve":
            time.sleep(60)
        else:
            n = len(starts.read_text().split()) if starts.exists() else 0
            with starts.open("a") as fh:
                fh.write(f"{{time.monotonic()}}\\n")
            exits = {worker_exits!r}
            sys.exit(exits[n] if n < len(exits) else 3)
    """))
    script = textwrap.dedent(f"""
        import sys, tingji.supervise as s
        s._tingji = lambda: [sys.executable, {str(child)!r}]
        sys.exit(s.supervise("127.0.0.1", 1, preload=False))
    """)
    t0 = time.monotonic()
    code = subprocess.run([sys.executable, "-c", script], timeout=60).returncode
    times = [float(x) for x in starts.read_text().split()]
    return code, times, t0


def test_a_recycled_worker_is_restarted_at_once(tmp_path: Path) -> None:
    code, starts, _ = _supervise(tmp_path, [75, 75, 1])
    # 75, 75: restarted within the supervisor's poll; 1 (a crash): after a pause; then
    # the stand-in says it cannot work (3), which stops the service with that code
    assert code == 3 and len(starts) == 4
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[0] < 1.5 and gaps[1] < 1.5
    assert gaps[2] >= 0.9  # a crash waits (1 s the first time)

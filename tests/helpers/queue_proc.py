"""A real OS process that talks to the queue, for the multi-process tests.

    python -m tests.helpers.queue_proc drain URL WORKER [GATE]
                                                            claim+complete until empty
                                                            (with GATE, a folder: first
                                                            write GATE/ready-WORKER, then
                                                            wait for GATE/go)
    python -m tests.helpers.queue_proc hold URL WORKER      claim one, print it, hang
    python -m tests.helpers.queue_proc finish URL WORKER    claim one and complete it
    python -m tests.helpers.queue_proc enqueue URL          enqueue forever, print each id

Every acknowledged id is printed (and flushed) only after its transaction committed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from db.engine import make_engine
from db.models import TaskKind
from db.queue import NewTask, Queue, QueueConfig
from db.reads import Reads


def say(*parts: object) -> None:
    print(*parts, flush=True)


async def gate(folder: Path, worker: str, queue: Queue) -> None:
    """Start together: connected and imported, say so, and wait for the others."""
    await Reads(queue.engine).counts()  # connected (claims nothing)
    (folder / f"ready-{worker}").touch()
    while not (folder / "go").exists():
        await asyncio.sleep(0.01)


async def main(mode: str, url: str, worker: str | None = None,
               gate_dir: str | None = None) -> None:
    lease = 5 if mode == "hold" else 60
    queue = Queue(make_engine(url), QueueConfig(lease_seconds=lease, max_pending=1_000_000))
    try:
        if mode == "drain":
            if gate_dir:
                await gate(Path(gate_dir), worker or "", queue)
            idle = 0
            while idle < 3:
                tasks = await queue.claim_next(worker or "", n=1)
                if not tasks:
                    idle += 1
                    await asyncio.sleep(0.05)
                    continue
                idle = 0
                for t in tasks:
                    await queue.complete(t.id, worker or "", {"by": worker})
                    say(t.id)
        elif mode in ("hold", "finish"):
            while not (tasks := await queue.claim_next(worker or "")):
                await asyncio.sleep(0.05)
            if mode == "finish":
                await queue.complete(tasks[0].id, worker or "", {"by": worker})
            say(tasks[0].id)
            if mode == "hold":
                await asyncio.sleep(3600)
        elif mode == "enqueue":
            n = 0
            while True:
                enq = await queue.enqueue(NewTask(TaskKind.URL, {"video_url": f"https://x/{n}"}))
                say(enq.task.id)
                n += 1
    finally:
        await queue.engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))

"""The live feed: one database poller per API process, whatever the number of open
event streams.  A real uvicorn server in this process (so its statements can be
counted), real HTTP clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import event
from sqlalchemy.engine import Engine

from db import migrate
from db.engine import make_engine
from db.models import TaskKind
from db.queue import Queue
from db.values import NewTask
from server.app import create_app
from tests.helpers.procs import free_port
from tingji.settings import Settings


class Statements:
    """Counts SQL statements sent by every engine of this process."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, *_: Any) -> None:
        with self.lock:
            self.n += 1


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    settings = Settings.from_env({"TINGJI_DATA_DIR": str(tmp_path)})
    migrate.upgrade(settings.database_url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield url, settings
    server.should_exit = True
    thread.join(10)


class Listener(threading.Thread):
    """One open event stream; collects the task ids of ``task`` events."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.ready, self.stop = url, threading.Event(), threading.Event()
        self.tasks: set[str] = set()

    def run(self) -> None:
        import json

        with httpx.Client(timeout=30) as c, c.stream("GET", self.url + "/api/v1/events") as r:
            kind = ""
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                    self.ready.set()
                elif line.startswith("data: ") and kind == "task":
                    self.tasks.add(json.loads(line[6:])["task"]["task_id"])
                if self.stop.is_set():
                    return


def enqueue(settings: Settings) -> str:
    async def run() -> str:
        engine = make_engine(settings.database_url)
        try:
            return (await Queue(engine).enqueue(NewTask(TaskKind.URL, {
                "video_url": "https://x.org/a.mp4", "options": {}}))).task.id
        finally:
            await engine.dispose()
    return asyncio.run(run())


def test_fifty_streams_cost_the_database_what_one_does(
        served: tuple[str, Settings]) -> None:
    url, settings = served
    count = Statements()
    event.listen(Engine, "before_cursor_execute", count)
    try:
        rates = {}
        for n in (1, 50):
            listeners = [Listener(url) for _ in range(n)]
            for li in listeners:
                li.start()
            for li in listeners:
                assert li.ready.wait(20)
            time.sleep(1.0)  # the connects' own catch-up queries are done
            before = count.n
            time.sleep(3.0)
            rates[n] = (count.n - before) / 3.0
            tid = enqueue(settings)  # every stream hears of it
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(tid in li.tasks
                                                           for li in listeners):
                time.sleep(0.1)
            assert all(tid in li.tasks for li in listeners)
            for li in listeners:
                li.stop.set()
        assert rates[1] > 0
        # one poller: about two statements per half second, with 1 stream or 50
        assert rates[50] <= rates[1] * 1.5 + 1, rates
    finally:
        event.remove(Engine, "before_cursor_execute", count)

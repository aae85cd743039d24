"""The HTTP API as a real server process, over real HTTP: what only a process shows
(its memory, the modules it never imports, refusing a public bind, a database that goes
away, fuzzing over the wire, the live event stream).  The routes' behaviour is tested
in process: ``tests/unit/test_api.py``."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from json import loads as json_loads
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PG_URL
from tests.helpers.http import error_of, submit
from tests.helpers.procs import Proc, clean_env, free_port, start_server


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-data")


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[Proc]:
    env = clean_env(TINGJI_DATA_DIR=str(data_dir), TINGJI_MAX_UPLOAD_MB="3")
    proc = start_server(env, data_dir / "server.log")
    yield proc
    proc.stop()


@pytest.fixture
def client(server: Proc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_server_never_loads_torch(server: Proc, client: httpx.Client) -> None:
    for _ in range(20):
        submit(client, "https://x.org/mem.mp4")
        client.get("/api/v1/tasks")
    maps = Path(f"/proc/{server.pid}/maps").read_text()
    assert "torch" not in maps and "funasr" not in maps
    code = ("import sys; from tingji.settings import Settings; from server.app import create_app;"
            "create_app(Settings.from_env({'TINGJI_DATA_DIR': sys.argv[1]}));"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'funasr', 'yt_dlp',"
            " 'openai')]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code, str(server.env["TINGJI_DATA_DIR"])],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_server_memory_stays_small_under_load(server: Proc) -> None:
    async def load() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            async def one(i: int) -> None:
                await c.post("/api/v1/process/bilibili", json={"video_url": f"https://x/{i}"})
                await c.get("/api/v1/tasks", params={"limit": 100})
            await asyncio.gather(*(one(i) for i in range(200)))
    asyncio.run(load())
    status = Path(f"/proc/{server.pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    assert rss_kb < 150 * 1024, f"API RSS {rss_kb / 1024:.0f} MB"


def test_refuses_public_bind_without_token(tmp_path: Path) -> None:
    from tests.helpers.procs import TINGJI
    env = clean_env(TINGJI_DATA_DIR=str(tmp_path))
    res = subprocess.run([TINGJI, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                         env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "TINGJI_API_TOKEN" in res.stderr


class _Proxy:
    """A TCP forwarder we can pull the plug on: the database becomes unreachable."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.port = target_port, free_port()
        self.conns: list[asyncio.StreamWriter] = []

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.conns += [w, uw]
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        self.server.close()
        for w in self.conns:
            w.close()


async def test_database_unreachable_is_503(tmp_path: Path) -> None:
    if PG_URL == "skip":
        pytest.skip("PostgreSQL disabled")
    from sqlalchemy.engine import make_url
    target = make_url(PG_URL)
    proxy = _Proxy(target.port or 5432)
    await proxy.start()
    url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    env = clean_env(TINGJI_DATA_DIR=str(tmp_path), TINGJI_DATABASE_URL=url)
    proc = await asyncio.to_thread(start_server, env, tmp_path / "server.log")
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as c:
            assert (await c.get("/health")).status_code == 200
            await proxy.stop()
            resp = await c.get("/health")
            assert resp.status_code == 503 and resp.json()["status"] == "unavailable"
            resp = await c.get("/api/v1/tasks")
            assert error_of(resp, 503)["code"] == "unavailable"
            resp = await c.post("/api/v1/process/bilibili", json={"video_url": "https://x/a"})
            error_of(resp, 503)
    finally:
        proc.stop()
    assert "Traceback" not in proc.output()


def test_fuzzing_the_schema_finds_no_server_error(server: Proc) -> None:
    """schemathesis generates requests from /schema; no answer may be a 5xx.  (The
    endless SSE stream is tested on its own, below.)"""
    exe = str(Path(sys.executable).with_name("schemathesis"))
    res = subprocess.run([exe, "run", f"{server.url}/schema/openapi.json",
                          "--checks", "not_a_server_error", "-n", "40", "--seed", "7",
                          "--request-timeout", "10", "--exclude-path", "/api/v1/events"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_COLOR": "1"})
    assert res.returncode == 0, res.stdout[-4000:]
    assert "Traceback" not in server.output()


def _sse(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Parse a Server-Sent Events stream into {event, id, data} dicts."""
    msg: dict[str, str] = {}
    for line in lines:
        if not line:
            if msg:
                yield msg
            msg = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            msg[field] = msg.get(field, "") + value.lstrip(" ")


def test_events_stream_and_resume(server: Proc, client: httpx.Client) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as sse:
        with sse.stream("GET", "/api/v1/events") as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            stream = _sse(resp.iter_lines())
            hello = next(stream)
            assert hello["event"] == "hello"
            tid = submit(client, "https://x.org/sse.mp4")["task_id"]
            got = next(m for m in stream if m.get("event") == "task")
            doc = json_loads(got["data"])
            assert doc["task"]["task_id"] == tid and doc["event"] == "enqueued"
            first_id = int(got["id"])
        client.post(f"/api/v1/task/{tid}/cancel")
        # reconnecting with Last-Event-ID delivers what happened while away
        with sse.stream("GET", "/api/v1/events",
                        headers={"Last-Event-ID": str(first_id)}) as resp:
            stream = _sse(resp.iter_lines())
            got = next(m for m in stream if m.get("event") == "task")
            doc = json_loads(got["data"])
            assert doc["task"]["task_id"] == tid and doc["task"]["status"] == "cancelled"
            assert int(got["id"]) > first_id


def _open_stream(url: str, path: str) -> tuple[Any, bytes]:
    """A raw HTTP/1.1 GET of an event stream (httpx's line reader waits for more than
    a stream's first message): the socket, and what arrived up to the end of the first
    message, or the whole answer when it is not a stream."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
                 "Connection: close\r\n\r\n".encode())
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
        head, _, body = got.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            continue  # an error answer: read it whole (the server closes)
        rest = body.partition(b"data: ")[2]
        if b"\r\n\r\n" in rest or b"\n\n" in rest:  # the first message is whole
            break
    return sock, got


def test_event_streams_are_capped_and_catch_up_is_bounded(tmp_path: Path) -> None:
    """TINGJI_MAX_EVENT_STREAMS live streams at most (the next gets 503 with Retry-After,
    a closed one frees its place), and a stream resuming from an old id replays the last
    1000 events only, saying how many it skipped."""
    from db.engine import make_engine
    from db.models import TaskKind
    from db.queue import Queue, QueueConfig
    from db.values import NewTask
    from server.routes.events import MAX_CATCH_UP

    data = tmp_path / "data"
    env = clean_env(TINGJI_DATA_DIR=str(data), TINGJI_MAX_EVENT_STREAMS="2",
                    TINGJI_MAX_PENDING="5000")
    proc = start_server(env, tmp_path / "server.log")
    try:
        async def fill() -> None:  # 1,200 tasks: 1,200 enqueued events
            engine = make_engine(f"sqlite:///{data / 'tingji.db'}")
            q = Queue(engine, QueueConfig(max_pending=5000))
            for _ in range(3):
                await q.enqueue_many([NewTask(TaskKind.URL, {
                    "url": "https://www.bilibili.com/video/BV1xx411c7mD", "options": {}})
                    for _ in range(400)])
            await engine.dispose()
        asyncio.run(fill())

        first, hello = _open_stream(proc.url, "/api/v1/events?since=0")
        assert hello.startswith(b"HTTP/1.1 200"), hello[:200]
        skipped = json_loads(hello.split(b"data: ", 1)[1].split(b"\r\n", 1)[0])["skipped"]
        assert skipped == 1200 - MAX_CATCH_UP
        replayed, buf = [], hello
        while len(replayed) < MAX_CATCH_UP:
            buf += first.recv(65536)
            replayed = re.findall(rb"^id: ?(\d+)", buf, re.M)
        assert int(replayed[0]) == skipped + 1 and len(set(replayed)) == MAX_CATCH_UP

        second, ok = _open_stream(proc.url, "/api/v1/events")
        assert ok.startswith(b"HTTP/1.1 200"), ok[:200]
        third, refused = _open_stream(proc.url, "/api/v1/events")
        assert refused.startswith(b"HTTP/1.1 503"), refused[:300]
        assert re.search(rb"(?i)^retry-after: \d+", refused, re.M)
        assert b"TINGJI_MAX_EVENT_STREAMS" in refused
        third.close()
        first.close()

        def place_freed() -> bool:
            sock, got = _open_stream(proc.url, "/api/v1/events")
            sock.close()
            return got.startswith(b"HTTP/1.1 200")
        for _ in range(50):
            if place_freed():
                break
            time.sleep(0.2)
        else:
            raise AssertionError("a closed stream did not free its place")
        second.close()
    finally:
        proc.stop()

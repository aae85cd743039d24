"""A webhook attempt against hostile receivers, in process with real sockets on
127.0.0.1: a gzip bomb is never inflated, a trickling receiver is cut off at the
attempt's deadline, and stuck deliveries hold up neither the worker's shared threads
nor other receivers."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpcore
import httpx
import pytest

from tests.helpers.servers import raw_server, trickling
from worker.stages.webhooks import Dispatcher, post_status

BOMB_MB = 64


@pytest.fixture(scope="module")
def bomb() -> Iterator[str]:
    body = gzip.compress(b"\0" * (BOMB_MB << 20), compresslevel=9)

    def handle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    yield from raw_server(handle)


@pytest.fixture(scope="module")
def trickle() -> Iterator[str]:
    """Answers one byte of its headers every 0.3 s, for ever."""
    yield from raw_server(trickling)


@pytest.fixture(scope="module")
def slow_body() -> Iterator[str]:
    """Its status line at once, then a body of a byte every 0.3 s."""
    def handle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(1000):
            conn.sendall(b"1\r\na\r\n")
            time.sleep(0.3)
    yield from raw_server(handle)


def _peak_mb(fn: Callable[[], Any]) -> tuple[Any, float]:
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_a_gzip_bomb_is_never_inflated(bomb: str) -> None:
    # the bomb is real: an ordinary client inflates it whole
    control, control_mb = _peak_mb(lambda: httpx.post(bomb, content=b"{}", timeout=30))
    assert control.status_code == 200 and control_mb > BOMB_MB * 0.9
    status, peak_mb = _peak_mb(lambda: post_status(bomb, b"{}", {}))
    assert status == 200 and peak_mb < 4, peak_mb


def test_a_trickling_receiver_is_cut_off_at_the_deadline(trickle: str) -> None:
    started = time.monotonic()
    with pytest.raises(httpcore.TimeoutException):
        post_status(trickle, b"{}", {}, deadline_s=1.5)
    assert time.monotonic() - started < 3


def test_the_body_is_not_waited_for(slow_body: str) -> None:
    started = time.monotonic()
    assert post_status(slow_body, b"{}", {}, deadline_s=5) == 204
    assert time.monotonic() - started < 2


class _Outbox:
    """The queue's outbox as the dispatcher sees it: hands out ``due`` once, records
    what each attempt came to."""

    def __init__(self, due: list[Any]) -> None:
        self.due, self.results = due, []  # type: list[Any], list[tuple[str, bool, str]]

    async def claim_deliveries(self, owner: str, **kw: Any) -> list[Any]:
        due, self.due = self.due, []
        return due

    async def delivery_result(self, delivery: Any, owner: str, *, ok: bool, detail: str,
                              permanent: bool = False) -> None:
        self.results.append((delivery.url, ok, detail))


def _delivery(url: str) -> Any:
    return SimpleNamespace(id=str(uuid.uuid4()), event="task.completed", url=url + "/hook",
                           body={"event": "task.completed"}, attempts=1)


async def test_stuck_deliveries_hold_up_neither_shared_threads_nor_other_receivers(
        trickle: str, bomb: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.stages import webhooks

    monkeypatch.setattr(webhooks, "SEND_DEADLINE_S", 2.0)
    monkeypatch.setattr(webhooks, "post_status", lambda url, body, headers: post_status(
        url, body, headers, deadline_s=2.0))
    outbox = _Outbox([_delivery(trickle) for _ in range(4)] + [_delivery(bomb)])
    dispatcher = Dispatcher(outbox, "d1", secret=None,  # type: ignore[arg-type]
                            allow_private=("127.0.0.0/8",))
    running = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.sleep(0.3)
        # meanwhile the worker's shared threads (downloads, result writes) are free
        started = time.monotonic()
        await asyncio.gather(*(asyncio.to_thread(time.sleep, 0.05) for _ in range(12)))
        assert time.monotonic() - started < 1.0
        deadline = time.monotonic() + 20
        while len(outbox.results) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        running.cancel()
    by_url = {}
    for url, ok, detail in outbox.results:
        by_url.setdefault(url, []).append((ok, detail))
    # the other receiver was not held up by the slow one; the slow one's attempts ran
    # one at a time, each cut at its deadline
    assert by_url[bomb + "/hook"] == [(True, "HTTP 200")]
    assert [r for r in by_url[trickle + "/hook"]] == \
        [(False, "the receiver did not answer within 2 s")] * 4
    first_done = [i for i, (u, _, _) in enumerate(outbox.results) if u.startswith(bomb)]
    assert first_done == [0]

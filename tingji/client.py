"""tingji's Python client: the calls the command line makes, for your own programs.

Five lines transcribe a file on a running service (``tingji run``)::

    from tingji.client import Client

    with Client.from_env() as tj:                      # TINGJI_URL, TINGJI_API_TOKEN
        task = tj.submit_file("talk.mp3", hotwords=["听记"])
        done = tj.wait(task["task_id"], on_progress=lambda t: print(t["stage"], t["progress"]))
        print(tj.result(done["task_id"], "srt"))

``AsyncClient`` has the same methods as coroutines.  Every submission is an ordinary
durable task: it survives restarts of the service and shows up in ``tingji list``.
Errors come back as ``ClientError`` with the API's own message and code; a service
that is not running is one clear line that says how to start it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Self, Unpack

import httpx

__all__ = ["AsyncClient", "BatchSubmitted", "Client", "ClientError", "Event", "Format",
           "Submitted", "Task", "TaskOptions", "TaskPage", "WaitTimeout", "TERMINAL"]

from tingji.api_calls import (
    Call,
    SseParser,
    checked,
    clean,
    download,
    list_tasks,
    one_match,
    service_target,
    short_id,
    submit_batch,
    submit_file,
    submit_url,
    transport_errors,
    unreachable,
)
from tingji.api_types import (
    DEFAULT_URL,
    TERMINAL,
    BatchSubmitted,
    ClientError,
    Event,
    Format,
    Status,
    Submitted,
    Task,
    TaskOptions,
    TaskPage,
    WaitTimeout,
)


class _Base:
    """What both clients share: where the service is, the token, the timeouts."""

    HTTP: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None,
                 timeout: float = 30.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.http: Any = self.HTTP(base_url=self.base_url, headers=headers,
                                   timeout=httpx.Timeout(timeout, connect=3.0))

    @classmethod
    def from_env(cls, base_url: str | None = None, token: str | None = None,
                 timeout: float = 30.0) -> Self:
        """``base_url`` and ``token`` default to ``TINGJI_URL`` and ``TINGJI_API_TOKEN``."""
        return cls(*service_target(base_url, token), timeout=timeout)


# ---------------------------------------------------------------- the sync client
class Client(_Base):
    """A blocking client."""

    HTTP = httpx.Client

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport
    def send(self, call: Call) -> httpx.Response:
        with transport_errors(self.base_url):
            if call.upload is None:
                resp = self.http.request(call.method, call.path, params=call.params,
                                         json=call.json, data=call.data)
            else:
                with open(call.upload, "rb") as fh:  # streamed by httpx, never read whole
                    resp = self.http.request(call.method, call.path, data=call.data,
                                             files={"file": (call.upload.name, fh)})
        return checked(resp, self.base_url, call.path)

    def get(self, path: str, **params: Any) -> Any:
        return self.send(Call("GET", path, params=clean(params))).json()

    # -- submit
    def submit_url(self, url: str, *, batch_id: str | None = None,
                   **options: Unpack[TaskOptions]) -> Submitted:
        """A URL (a video, a multi-part video, or a list) as a durable task."""
        return self.send(submit_url(url, batch_id, options)).json()  # type: ignore[no-any-return]

    def submit_file(self, path: str | os.PathLike[str], *, batch_id: str | None = None,
                    **options: Unpack[TaskOptions]) -> Submitted:
        """A local audio or video file, uploaded (streamed) as a durable task."""
        return self.send(submit_file(path, batch_id, options)).json()  # type: ignore

    def submit_batch(self, urls: Sequence[str], **options: Unpack[TaskOptions]
                     ) -> BatchSubmitted:
        """Several URLs as one batch, in one transaction."""
        return self.send(submit_batch(urls, options)).json()  # type: ignore[no-any-return]

    # -- read
    def task(self, task_id: str) -> Task:
        return self.get(f"/api/v1/task/{task_id}")  # type: ignore[no-any-return]

    def events(self, task_id: str) -> list[Event]:
        """A task's history, oldest first."""
        return self.get(f"/api/v1/task/{task_id}/events")  # type: ignore[no-any-return]

    def tasks(self, status: Status | None = None, batch_id: str | None = None,
              limit: int = 50, offset: int = 0, id_prefix: str | None = None) -> TaskPage:
        """One page of tasks, newest first."""
        return self.send(list_tasks(status, batch_id, limit, offset, id_prefix)).json()  # type: ignore

    def all_tasks(self, status: Status | None = None, batch_id: str | None = None
                  ) -> list[Task]:
        out: list[Task] = []
        while True:
            page = self.tasks(status, batch_id, limit=500, offset=len(out))
            out += page["tasks"]
            if not page["tasks"] or len(out) >= page["total"]:
                return out

    def resolve(self, short: str) -> str:
        """A full task id from a full or short (prefix) id; ambiguous -> error."""
        return short_id(short) or one_match(short, self.tasks(id_prefix=short.strip().lower(),
                                                                limit=5))

    def parts(self, url: str) -> dict[str, Any]:
        """A multi-part video's parts, or a list's entries, without submitting."""
        return self.get("/api/v1/bilibili/parts", url=url)  # type: ignore[no-any-return]

    def wait(self, task_id: str, *, timeout: float | None = None, interval: float = 0.5,
             on_progress: Callable[[Task], object] | None = None) -> Task:
        """Until the task is completed, failed or cancelled; its final state.
        ``on_progress`` gets the task each time it changes; ``WaitTimeout`` after
        ``timeout`` seconds (the task goes on)."""
        return self.wait_all([task_id], timeout=timeout, interval=interval,
                             on_progress=on_progress)[0]

    def wait_all(self, task_ids: Sequence[str], *, timeout: float | None = None,
                 interval: float = 0.5, on_progress: Callable[[Task], object] | None = None
                 ) -> list[Task]:
        waiter = _Waiter(list(task_ids), timeout, on_progress)
        while True:
            for tid in waiter.open():
                waiter.seen(self.task(tid))
            if waiter.done():
                return waiter.final()
            time.sleep(interval)

    def follow(self, since: int | None = None) -> Iterator[tuple[str, int | None, Any]]:
        """The live feed (``GET /api/v1/events``): (event, id, data) as they come; the
        first is ``hello`` with the last event id.  Ends when the stream does."""
        params = {"since": since} if since is not None else {}
        try:
            with self.http.stream("GET", "/api/v1/events", params=params,
                                  timeout=httpx.Timeout(60.0, connect=3.0)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    checked(resp, self.base_url, "/api/v1/events")
                sse = SseParser()
                for line in resp.iter_lines():
                    if (item := sse.feed(line)) is not None:
                        yield item
        except httpx.ConnectError:
            raise unreachable(self.base_url) from None

    # -- act
    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.send(Call("POST", f"/api/v1/task/{task_id}/cancel")).json()  # type: ignore

    def retry(self, task_id: str) -> dict[str, Any]:
        return self.send(Call("POST", f"/api/v1/task/{task_id}/retry")).json()  # type: ignore

    def download(self, task_id: str, fmt: Format | None = None, lang: str | None = None
                 ) -> httpx.Response:
        """A completed task's result in one format, or all of them as a zip (None);
        ``lang``: srt or vtt in the task's translation, or "bilingual"."""
        return self.send(download(task_id, fmt, lang))

    def result(self, task_id: str, fmt: Format = "txt", lang: str | None = None) -> str:
        """A completed task's result as text (txt, md, json, srt, vtt, chapters or
        mindmap)."""
        return self.download(task_id, fmt, lang).text


# ---------------------------------------------------------------- the async client
class AsyncClient(_Base):
    """The same API as ``Client``, as coroutines (``async with AsyncClient(...)``)."""

    HTTP = httpx.AsyncClient

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send(self, call: Call) -> httpx.Response:
        with transport_errors(self.base_url):
            if call.upload is None:
                resp = await self.http.request(call.method, call.path, params=call.params,
                                               json=call.json, data=call.data)
            else:
                with open(call.upload, "rb") as fh:
                    resp = await self.http.request(call.method, call.path, data=call.data,
                                                   files={"file": (call.upload.name, fh)})
        return checked(resp, self.base_url, call.path)

    async def get(self, path: str, **params: Any) -> Any:
        return (await self.send(Call("GET", path, params=clean(params)))).json()

    async def submit_url(self, url: str, *, batch_id: str | None = None,
                         **options: Unpack[TaskOptions]) -> Submitted:
        return (await self.send(submit_url(url, batch_id, options))).json()  # type: ignore

    async def submit_file(self, path: str | os.PathLike[str], *, batch_id: str | None = None,
                          **options: Unpack[TaskOptions]) -> Submitted:
        return (await self.send(submit_file(path, batch_id, options))).json()  # type: ignore

    async def submit_batch(self, urls: Sequence[str], **options: Unpack[TaskOptions]
                           ) -> BatchSubmitted:
        return (await self.send(submit_batch(urls, options))).json()  # type: ignore

    async def task(self, task_id: str) -> Task:
        return await self.get(f"/api/v1/task/{task_id}")  # type: ignore[no-any-return]

    async def events(self, task_id: str) -> list[Event]:
        return await self.get(f"/api/v1/task/{task_id}/events")  # type: ignore

    async def tasks(self, status: Status | None = None, batch_id: str | None = None,
                    limit: int = 50, offset: int = 0, id_prefix: str | None = None
                    ) -> TaskPage:
        return (await self.send(list_tasks(status, batch_id, limit, offset, id_prefix))).json()  # type: ignore

    async def resolve(self, short: str) -> str:
        return short_id(short) or one_match(
            short, await self.tasks(id_prefix=short.strip().lower(), limit=5))

    async def parts(self, url: str) -> dict[str, Any]:
        return await self.get("/api/v1/bilibili/parts", url=url)  # type: ignore

    async def wait(self, task_id: str, *, timeout: float | None = None,
                   interval: float = 0.5,
                   on_progress: Callable[[Task], object | Awaitable[object]] | None = None
                   ) -> Task:
        return (await self.wait_all([task_id], timeout=timeout, interval=interval,
                                    on_progress=on_progress))[0]

    async def wait_all(self, task_ids: Sequence[str], *, timeout: float | None = None,
                       interval: float = 0.5,
                       on_progress: Callable[[Task], object | Awaitable[object]] | None = None
                       ) -> list[Task]:
        """As ``Client.wait_all``; ``on_progress`` may be a coroutine function."""
        waiter = _Waiter(list(task_ids), timeout, None)
        while True:
            for tid in waiter.open():
                if waiter.seen(await self.task(tid)) and on_progress is not None:
                    got = on_progress(waiter.latest[tid])
                    if asyncio.iscoroutine(got):
                        await got
            if waiter.done():
                return waiter.final()
            await asyncio.sleep(interval)

    async def follow(self, since: int | None = None
                     ) -> AsyncIterator[tuple[str, int | None, Any]]:
        params = {"since": since} if since is not None else {}
        try:
            async with self.http.stream("GET", "/api/v1/events", params=params,
                                        timeout=httpx.Timeout(60.0, connect=3.0)) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    checked(resp, self.base_url, "/api/v1/events")
                sse = SseParser()
                async for line in resp.aiter_lines():
                    if (item := sse.feed(line)) is not None:
                        yield item
        except httpx.ConnectError:
            raise unreachable(self.base_url) from None

    async def cancel(self, task_id: str) -> dict[str, Any]:
        return (await self.send(Call("POST", f"/api/v1/task/{task_id}/cancel"))).json()  # type: ignore

    async def retry(self, task_id: str) -> dict[str, Any]:
        return (await self.send(Call("POST", f"/api/v1/task/{task_id}/retry"))).json()  # type: ignore

    async def download(self, task_id: str, fmt: Format | None = None,
                       lang: str | None = None) -> httpx.Response:
        return await self.send(download(task_id, fmt, lang))

    async def result(self, task_id: str, fmt: Format = "txt", lang: str | None = None) -> str:
        return (await self.download(task_id, fmt, lang)).text


class _Waiter:
    """The bookkeeping of waiting for tasks, shared by both clients."""

    def __init__(self, ids: list[str], timeout: float | None,
                 on_progress: Callable[[Task], object] | None):
        self.ids, self.timeout, self.on_progress = ids, timeout, on_progress
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.latest: dict[str, Task] = {}

    def open(self) -> list[str]:
        return [t for t in self.ids
                if t not in self.latest or self.latest[t]["status"] not in TERMINAL]

    def seen(self, task: Task) -> bool:
        """Records the task; True if it changed (status, stage or progress)."""
        before = self.latest.get(task["task_id"])
        self.latest[task["task_id"]] = task
        changed = before is None or any(before[k] != task[k]  # type: ignore[literal-required]
                                        for k in ("status", "stage", "progress"))
        if changed and self.on_progress is not None:
            self.on_progress(task)
        return changed

    def done(self) -> bool:
        if not self.open():
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise WaitTimeout(self.latest[self.open()[0]], self.timeout or 0)
        return False

    def final(self) -> list[Task]:
        return [self.latest[t] for t in self.ids]

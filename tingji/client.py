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
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, TypedDict, Unpack

import httpx

__all__ = ["AsyncClient", "BatchSubmitted", "Client", "ClientError", "Event", "Format",
           "Submitted", "Task", "TaskOptions", "TaskPage", "WaitTimeout", "TERMINAL"]

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("completed", "failed", "cancelled")
Format = Literal["txt", "md", "json", "srt", "vtt"]
Status = Literal["pending", "processing", "completed", "failed", "cancelled"]


class TaskOptions(TypedDict, total=False):
    """What a submission may ask for (the API's field names)."""

    polish: bool  # LLM polish (default: when the service has an LLM configured)
    summarize: bool  # also an LLM summary
    llm_model: str
    temperature: float
    max_tokens: int
    priority: int  # higher runs first; -1000..1000
    idempotency_key: str  # the same key again names the same task
    callback_url: str  # a webhook POSTed when the task finishes
    hotwords: list[str]  # names and terms to favour
    speakers: int | Literal["auto"]  # label who speaks: "auto" or 2-16
    parts: list[int]  # URLs only: parts of a multi-part video
    expand: bool  # URLs only: the URL is a list, one task per entry


class ErrorInfo(TypedDict):
    type: str
    message: str


class Task(TypedDict):
    task_id: str
    kind: str
    status: Status
    stage: str | None
    progress: float  # 0..1
    message: str | None
    priority: int
    attempts: int
    max_attempts: int
    error: ErrorInfo | None
    result: dict[str, Any] | None  # text, duration_s, segments, stage_seconds, ...
    created_at: str
    started_at: str | None
    completed_at: str | None
    updated_at: str
    batch_id: str | None
    source: str | None
    title: str | None
    cancel_requested: bool


class Submitted(TypedDict, total=False):
    task_id: str
    status: str
    message: str
    created_at: str
    created: bool  # False: the idempotency key named an existing task
    kind: str
    batch_id: str | None


class BatchSubmitted(TypedDict):
    batch_id: str
    task_ids: list[str]
    status: str
    created: bool


class TaskPage(TypedDict):
    tasks: list[Task]
    total: int
    limit: int
    offset: int


class Event(TypedDict):
    id: int
    at: str
    event: str
    from_status: str | None
    to_status: str | None
    worker_id: str | None
    detail: dict[str, Any] | None


class ClientError(Exception):
    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


class WaitTimeout(ClientError):
    """``wait`` ran out of time; the task goes on.  ``task`` is its last state."""

    def __init__(self, task: Task, seconds: float):
        super().__init__(f"task {task['task_id']} is still {task['status']} after "
                         f"{seconds:g} s; it goes on in the service")
        self.task = task


# ---------------------------------------------------------------- requests, once
@dataclass(frozen=True, slots=True)
class _Call:
    """One API request, described once and sent by either client."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    upload: Path | None = None  # sent as the multipart field "file"
    extra: dict[str, Any] = field(default_factory=dict)


def _clean(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _submit_url(url: str, batch_id: str | None, options: Mapping[str, Any]) -> _Call:
    return _Call("POST", "/api/v1/process/bilibili",
                 json=_clean({"video_url": url, **options, "batch_id": batch_id}))


def _submit_file(path: str | os.PathLike[str], batch_id: str | None,
                 options: Mapping[str, Any]) -> _Call:
    fields = {k: _form(v) for k, v in _clean({**options, "batch_id": batch_id}).items()}
    return _Call("POST", "/api/v1/process/audio", data=fields, upload=Path(path))


def _submit_batch(urls: Sequence[str], options: Mapping[str, Any]) -> _Call:
    return _Call("POST", "/api/v1/process/batch", json={"urls": list(urls), **options})


def _tasks(status: str | None, batch_id: str | None, limit: int, offset: int,
           id_prefix: str | None) -> _Call:
    return _Call("GET", "/api/v1/tasks", params=_clean(
        {"status": status, "batch_id": batch_id, "limit": limit, "offset": offset,
         "id_prefix": id_prefix}))


def _download(task_id: str, fmt: str | None) -> _Call:
    return _Call("GET", f"/api/v1/download/{task_id}", params=_clean({"format": fmt}))


def _form(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):  # hotwords, parts: the form field separates them with commas
        return ",".join(str(v) for v in value)
    return str(value)


def _short_id(short: str) -> str | None:
    """A full id if ``short`` is one; None if it needs a lookup; ClientError if too short."""
    s = short.strip().lower()
    try:
        return str(uuid.UUID(s))
    except ValueError:
        pass
    if len(s) < 4:
        raise ClientError(f"{short!r}: give at least 4 characters of a task id")
    return None


def _one_match(short: str, page: TaskPage) -> str:
    ids = [t["task_id"] for t in page["tasks"]]
    if not ids:
        raise ClientError(f"no task id starts with {short!r}")
    if page["total"] > 1:
        raise ClientError(f"{short!r} is ambiguous: it starts "
                          f"{page['total']} task ids ({', '.join(i[:13] for i in ids)}…)")
    return ids[0]


def _check(resp: httpx.Response, base_url: str, path: str) -> httpx.Response:
    if resp.status_code < 400:
        return resp
    try:
        err = resp.json()["error"]
        message, code = err["message"], err["code"]
    except (ValueError, KeyError, TypeError):
        raise ClientError(f"HTTP {resp.status_code} from {base_url}{path}",
                          resp.status_code) from None
    raise ClientError(message, resp.status_code, code)


def _unreachable(base_url: str) -> ClientError:
    return ClientError(f"cannot reach the tingji service at {base_url}; start it with "
                       "`tingji run` (or scripts/start.sh), or set TINGJI_URL")


class _Sse:
    """Server-sent events, one line at a time: ``feed`` returns (event, id, data) when
    a line ends one."""

    def __init__(self) -> None:
        self.event, self.eid, self.data = "message", None, []  # type: ignore[var-annotated]

    def feed(self, line: str) -> tuple[str, int | None, Any] | None:
        if line:
            if line.startswith("event:"):
                self.event = line[6:].strip()
            elif line.startswith("id:"):
                self.eid = int(line[3:].strip())
            elif line.startswith("data:"):
                self.data.append(line[5:].strip())
            return None
        # Litestar sends a keep-alive comment with an empty data line: a message without
        # data is not an event
        got = (self.event, self.eid, json.loads("\n".join(self.data))) \
            if "".join(self.data) else None
        self.event, self.eid, self.data = "message", None, []
        return got


def _env(base_url: str | None, token: str | None) -> tuple[str, str | None]:
    return ((base_url or os.environ.get("TINGJI_URL") or DEFAULT_URL).rstrip("/"),
            token if token is not None else os.environ.get("TINGJI_API_TOKEN") or None)


@contextmanager
def _transport_errors(base_url: str) -> Iterator[None]:
    """httpx's connection errors as the ClientError a user can act on."""
    try:
        yield
    except httpx.ConnectError:
        raise _unreachable(base_url) from None
    except httpx.TimeoutException:
        raise ClientError(f"the tingji service at {base_url} did not answer in time") from None


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
        return cls(*_env(base_url, token), timeout=timeout)


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
    def send(self, call: _Call) -> httpx.Response:
        with _transport_errors(self.base_url):
            if call.upload is None:
                resp = self.http.request(call.method, call.path, params=call.params,
                                         json=call.json, data=call.data)
            else:
                with open(call.upload, "rb") as fh:  # streamed by httpx, never read whole
                    resp = self.http.request(call.method, call.path, data=call.data,
                                             files={"file": (call.upload.name, fh)})
        return _check(resp, self.base_url, call.path)

    def get(self, path: str, **params: Any) -> Any:
        return self.send(_Call("GET", path, params=_clean(params))).json()

    # -- submit
    def submit_url(self, url: str, *, batch_id: str | None = None,
                   **options: Unpack[TaskOptions]) -> Submitted:
        """A URL (a video, a multi-part video, or a list) as a durable task."""
        return self.send(_submit_url(url, batch_id, options)).json()  # type: ignore[no-any-return]

    def submit_file(self, path: str | os.PathLike[str], *, batch_id: str | None = None,
                    **options: Unpack[TaskOptions]) -> Submitted:
        """A local audio or video file, uploaded (streamed) as a durable task."""
        return self.send(_submit_file(path, batch_id, options)).json()  # type: ignore

    def submit_batch(self, urls: Sequence[str], **options: Unpack[TaskOptions]
                     ) -> BatchSubmitted:
        """Several URLs as one batch, in one transaction."""
        return self.send(_submit_batch(urls, options)).json()  # type: ignore[no-any-return]

    # -- read
    def task(self, task_id: str) -> Task:
        return self.get(f"/api/v1/task/{task_id}")  # type: ignore[no-any-return]

    def events(self, task_id: str) -> list[Event]:
        """A task's history, oldest first."""
        return self.get(f"/api/v1/task/{task_id}/events")  # type: ignore[no-any-return]

    def tasks(self, status: Status | None = None, batch_id: str | None = None,
              limit: int = 50, offset: int = 0, id_prefix: str | None = None) -> TaskPage:
        """One page of tasks, newest first."""
        return self.send(_tasks(status, batch_id, limit, offset, id_prefix)).json()  # type: ignore

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
        return _short_id(short) or _one_match(short, self.tasks(id_prefix=short.strip().lower(),
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
                    _check(resp, self.base_url, "/api/v1/events")
                sse = _Sse()
                for line in resp.iter_lines():
                    if (item := sse.feed(line)) is not None:
                        yield item
        except httpx.ConnectError:
            raise _unreachable(self.base_url) from None

    # -- act
    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.send(_Call("POST", f"/api/v1/task/{task_id}/cancel")).json()  # type: ignore

    def retry(self, task_id: str) -> dict[str, Any]:
        return self.send(_Call("POST", f"/api/v1/task/{task_id}/retry")).json()  # type: ignore

    def download(self, task_id: str, fmt: Format | None = None) -> httpx.Response:
        """A completed task's result in one format, or all of them as a zip (None)."""
        return self.send(_download(task_id, fmt))

    def result(self, task_id: str, fmt: Format = "txt") -> str:
        """A completed task's result as text (txt, md, json, srt or vtt)."""
        return self.download(task_id, fmt).text


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

    async def send(self, call: _Call) -> httpx.Response:
        with _transport_errors(self.base_url):
            if call.upload is None:
                resp = await self.http.request(call.method, call.path, params=call.params,
                                               json=call.json, data=call.data)
            else:
                with open(call.upload, "rb") as fh:
                    resp = await self.http.request(call.method, call.path, data=call.data,
                                                   files={"file": (call.upload.name, fh)})
        return _check(resp, self.base_url, call.path)

    async def get(self, path: str, **params: Any) -> Any:
        return (await self.send(_Call("GET", path, params=_clean(params)))).json()

    async def submit_url(self, url: str, *, batch_id: str | None = None,
                         **options: Unpack[TaskOptions]) -> Submitted:
        return (await self.send(_submit_url(url, batch_id, options))).json()  # type: ignore

    async def submit_file(self, path: str | os.PathLike[str], *, batch_id: str | None = None,
                          **options: Unpack[TaskOptions]) -> Submitted:
        return (await self.send(_submit_file(path, batch_id, options))).json()  # type: ignore

    async def submit_batch(self, urls: Sequence[str], **options: Unpack[TaskOptions]
                           ) -> BatchSubmitted:
        return (await self.send(_submit_batch(urls, options))).json()  # type: ignore

    async def task(self, task_id: str) -> Task:
        return await self.get(f"/api/v1/task/{task_id}")  # type: ignore[no-any-return]

    async def events(self, task_id: str) -> list[Event]:
        return await self.get(f"/api/v1/task/{task_id}/events")  # type: ignore

    async def tasks(self, status: Status | None = None, batch_id: str | None = None,
                    limit: int = 50, offset: int = 0, id_prefix: str | None = None
                    ) -> TaskPage:
        return (await self.send(_tasks(status, batch_id, limit, offset, id_prefix))).json()  # type: ignore

    async def resolve(self, short: str) -> str:
        return _short_id(short) or _one_match(
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
                    _check(resp, self.base_url, "/api/v1/events")
                sse = _Sse()
                async for line in resp.aiter_lines():
                    if (item := sse.feed(line)) is not None:
                        yield item
        except httpx.ConnectError:
            raise _unreachable(self.base_url) from None

    async def cancel(self, task_id: str) -> dict[str, Any]:
        return (await self.send(_Call("POST", f"/api/v1/task/{task_id}/cancel"))).json()  # type: ignore

    async def retry(self, task_id: str) -> dict[str, Any]:
        return (await self.send(_Call("POST", f"/api/v1/task/{task_id}/retry"))).json()  # type: ignore

    async def download(self, task_id: str, fmt: Format | None = None) -> httpx.Response:
        return await self.send(_download(task_id, fmt))

    async def result(self, task_id: str, fmt: Format = "txt") -> str:
        return (await self.download(task_id, fmt)).text


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

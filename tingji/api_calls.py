"""The requests tingji's clients make, each described once (method, path, body) and
sent by either client, and how an answer or a failure to connect becomes a
``ClientError``."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tingji.api_types import DEFAULT_URL, ClientError, TaskPage


@dataclass(frozen=True, slots=True)
class Call:
    """One API request, described once and sent by either client."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    upload: Path | None = None  # sent as the multipart field "file"
    extra: dict[str, Any] = field(default_factory=dict)


def clean(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def submit_url(url: str, batch_id: str | None, options: Mapping[str, Any]) -> Call:
    return Call("POST", "/api/v1/process/bilibili",
                 json=clean({"video_url": url, **options, "batch_id": batch_id}))


def submit_file(path: str | os.PathLike[str], batch_id: str | None,
                 options: Mapping[str, Any]) -> Call:
    fields = {k: form(v) for k, v in clean({**options, "batch_id": batch_id}).items()}
    return Call("POST", "/api/v1/process/audio", data=fields, upload=Path(path))


def submit_batch(urls: Sequence[str], options: Mapping[str, Any]) -> Call:
    return Call("POST", "/api/v1/process/batch", json={"urls": list(urls), **options})


def list_tasks(status: str | None, batch_id: str | None, limit: int, offset: int,
           id_prefix: str | None) -> Call:
    return Call("GET", "/api/v1/tasks", params=clean(
        {"status": status, "batch_id": batch_id, "limit": limit, "offset": offset,
         "id_prefix": id_prefix}))


def download(task_id: str, fmt: str | None, lang: str | None = None) -> Call:
    return Call("GET", f"/api/v1/download/{task_id}",
                params=clean({"format": fmt, "lang": lang}))


def form(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):  # hotwords, parts: the form field separates them with commas
        return ",".join(str(v) for v in value)
    return str(value)


def short_id(short: str) -> str | None:
    """A full id if ``short`` is one; None if it needs a lookup; ClientError if too short."""
    s = short.strip().lower()
    try:
        return str(uuid.UUID(s))
    except ValueError:
        pass
    if len(s) < 4:
        raise ClientError(f"{short!r}: give at least 4 characters of a task id")
    return None


def one_match(short: str, page: TaskPage) -> str:
    ids = [t["task_id"] for t in page["tasks"]]
    if not ids:
        raise ClientError(f"no task id starts with {short!r}")
    if page["total"] > 1:
        raise ClientError(f"{short!r} is ambiguous: it starts "
                          f"{page['total']} task ids ({', '.join(i[:13] for i in ids)}…)")
    return ids[0]


def checked(resp: httpx.Response, base_url: str, path: str) -> httpx.Response:
    if resp.status_code < 400:
        return resp
    try:
        err = resp.json()["error"]
        message, code = err["message"], err["code"]
    except (ValueError, KeyError, TypeError):
        raise ClientError(f"HTTP {resp.status_code} from {base_url}{path}",
                          resp.status_code) from None
    raise ClientError(message, resp.status_code, code)


def unreachable(base_url: str) -> ClientError:
    return ClientError(f"cannot reach the tingji service at {base_url}; start it with "
                       "`tingji run` (or scripts/start.sh), or set TINGJI_URL")


class SseParser:
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


def service_target(base_url: str | None, token: str | None) -> tuple[str, str | None]:
    return ((base_url or os.environ.get("TINGJI_URL") or DEFAULT_URL).rstrip("/"),
            token if token is not None else os.environ.get("TINGJI_API_TOKEN") or None)


@contextmanager
def transport_errors(base_url: str) -> Iterator[None]:
    """httpx's connection errors as the ClientError a user can act on."""
    try:
        yield
    except httpx.ConnectError:
        raise unreachable(base_url) from None
    except httpx.TimeoutException:
        raise ClientError(f"the tingji service at {base_url} did not answer in time") from None

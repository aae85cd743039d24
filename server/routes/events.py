"""Live updates for the web page: a Server-Sent Events stream fed from the database,
so it sees changes whichever process (any worker, any API) made them.

``GET /api/v1/events`` sends ``task`` events (one per task change: the task's
current snapshot, with the ``task_events`` row id as the SSE id, so a client that
reconnects with ``Last-Event-ID`` (or ``?since=``) misses nothing) and ``progress``
events for running tasks (stage and progress, which change without an event row).
A comment line every 15 s keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.params import Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from db.models import TaskStatus
from server.app import services
from server.errors import bad_request
from server.schemas import task_view

_EVENT_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() takes "²"
POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
BACKLOG = 500


def _json(obj: Any) -> str:
    return msgspec.json.encode(obj).decode()


@get("/events", summary="Server-Sent Events: task changes and progress")
async def events(
    request: Request[Any, Any, Any],
    since: Annotated[int | None, Parameter(ge=0, le=2**62, description=(
        "resume after this event id (the Last-Event-ID header does the same)"))] = None,
) -> ServerSentEvent:
    reads = services(request).reads
    header = request.headers.get("last-event-id", "").strip()
    if since is None and header:
        if not _EVENT_ID.fullmatch(header):
            raise bad_request("Last-Event-ID: expected an event id (digits), got "
                              f"{header[:40]!r}")
        since = int(header)
    last_id = await reads.last_event_id() if since is None else since

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        nonlocal last_id
        progress_seen: dict[str, tuple[Any, ...]] = {}
        yield ServerSentEventMessage(event="hello", data=_json(
            {"last_event_id": last_id, "queue": await reads.counts()}), retry=2000)
        quiet_since = time.monotonic()
        while True:
            sent = False
            rows = await reads.events_since(last_id, limit=BACKLOG)
            if rows:
                latest: dict[str, tuple[int, str]] = {}
                for e in rows:
                    latest[e.task_id] = (e.id, e.event)
                tasks = {t.id: t for t in await reads.tasks_by_ids(list(latest))}
                for tid, (eid, name) in sorted(latest.items(), key=lambda kv: kv[1][0]):
                    task = tasks.get(tid)
                    if task is None:  # pruned since
                        continue
                    yield ServerSentEventMessage(event="task", id=eid, data=_json(
                        {"event": name, "task": task_view(task)}))
                    progress_seen.pop(tid, None)
                last_id = rows[-1].id
                sent = True
            running, _ = await reads.list_tasks(status=TaskStatus.PROCESSING, limit=200)
            for t in running:
                key = (t.stage, round(t.progress, 3), t.message)
                if progress_seen.get(t.id) != key:
                    progress_seen[t.id] = key
                    yield ServerSentEventMessage(event="progress", data=json.dumps({
                        "task_id": t.id, "stage": str(t.stage) if t.stage else None,
                        "progress": round(t.progress, 4), "message": t.message},
                        ensure_ascii=False))
                    sent = True
            now = time.monotonic()
            if sent:
                quiet_since = now
            elif now - quiet_since > KEEPALIVE_SECONDS:
                yield ServerSentEventMessage(comment="keep-alive")
                quiet_since = now
            await asyncio.sleep(POLL_SECONDS)

    return ServerSentEvent(stream(), headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})


handlers = [events]

"""Live updates for the web page: a Server-Sent Events stream fed from the database
(by the one shared poller of ``server.feed``), so it sees changes whichever process (any
worker, any API) made them.

``GET /api/v1/events`` sends ``task`` events (one per task change: the task's
current snapshot, with the ``task_events`` row id as the SSE id, so a client that
reconnects with ``Last-Event-ID`` (or ``?since=``) misses nothing) and ``progress``
events for running tasks (stage and progress, which change without an event row).
A comment line every 15 s keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.params import Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from server.deps import FeedDep, ReadsDep
from server.errors import bad_request
from server.feed import BATCH, Item, task_items

_EVENT_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() takes "²"
KEEPALIVE_SECONDS = 15.0


def _json(obj: Any) -> str:
    return msgspec.json.encode(obj).decode()


@get("/events", summary="Server-Sent Events: task changes and progress")
async def events(
    request: Request[Any, Any, Any],
    reads: ReadsDep,
    feed: FeedDep,
    since: Annotated[int | None, Parameter(ge=0, le=2**62, description=(
        "resume after this event id (the Last-Event-ID header does the same)"))] = None,
) -> ServerSentEvent:
    header = request.headers.get("last-event-id", "").strip()
    if since is None and header:
        if not _EVENT_ID.fullmatch(header):
            raise bad_request("Last-Event-ID: expected an event id (digits), got "
                              f"{header[:40]!r}")
        since = int(header)
    start = await reads.last_event_id() if since is None else since

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        sub = await feed.subscribe()
        try:
            yield ServerSentEventMessage(event="hello", data=_json(
                {"last_event_id": start, "queue": await reads.counts()}), retry=2000)
            # Catch up from `start` to what the shared feed delivers from now on (its
            # items up to what was sent here are skipped below).
            sent = start
            while rows := await reads.events_since(sent, limit=BATCH):
                for item in await task_items(reads, rows):
                    yield _message(item)
                sent = rows[-1].id
            for item in sub.progress:
                yield _message(item)
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        item = await sub.queue.get()
                except TimeoutError:
                    yield ServerSentEventMessage(comment="keep-alive")
                    continue
                if item is None:  # fell too far behind: the client reconnects
                    return
                if item.id is not None:
                    if item.id <= sent:
                        continue
                    sent = item.id
                yield _message(item)
        finally:
            feed.unsubscribe(sub)

    return ServerSentEvent(stream(), headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})


def _message(item: Item) -> ServerSentEventMessage:
    return ServerSentEventMessage(event=item.event, id=item.id, data=_json(item.data))


handlers = [events]

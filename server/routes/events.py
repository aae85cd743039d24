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
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE

from server.deps import FeedDep, ReadsDep, SettingsDep
from server.errors import ApiError, bad_request
from server.feed import BATCH, Item, task_items

_EVENT_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() takes "²"
KEEPALIVE_SECONDS = 15.0
MAX_CATCH_UP = 1000  # events replayed to a stream that resumes from an old id


def _json(obj: Any) -> str:
    return msgspec.json.encode(obj).decode()


def catch_up_from(last: int, since: int) -> tuple[int, int]:
    """Where a stream resuming after ``since`` starts, and how many events it skips: an
    old id replays the last ``MAX_CATCH_UP`` events only (the page reloads its list)."""
    skipped = max(0, last - MAX_CATCH_UP - since)
    return since + skipped, skipped


@get("/events", summary="Server-Sent Events: task changes and progress")
async def events(
    request: Request[Any, Any, Any],
    reads: ReadsDep,
    feed: FeedDep,
    settings: SettingsDep,
    since: Annotated[int | None, Parameter(ge=0, le=2**62, description=(
        "resume after this event id (the Last-Event-ID header does the same)"))] = None,
) -> ServerSentEvent:
    header = request.headers.get("last-event-id", "").strip()
    if since is None and header:
        if not _EVENT_ID.fullmatch(header):
            raise bad_request("Last-Event-ID: expected an event id (digits), got "
                              f"{header[:40]!r}")
        since = int(header)
    if len(feed.subscribers) >= settings.max_event_streams:
        raise ApiError(HTTP_503_SERVICE_UNAVAILABLE, "too_many_streams",
                       f"{len(feed.subscribers)} live event streams are open, the most at "
                       "once (TINGJI_MAX_EVENT_STREAMS); try again shortly",
                       {"Retry-After": "10"})
    last = await reads.last_event_id()
    start, skipped = (last, 0) if since is None else catch_up_from(last, since)

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        sub = await feed.subscribe()
        try:
            yield ServerSentEventMessage(event="hello", data=_json(
                {"last_event_id": start, "skipped": skipped, "queue": await reads.counts()}),
                retry=2000)
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

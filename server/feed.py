"""One live feed per API process: a single poller reads the database (new
``task_events`` rows and the progress of running tasks) every ``poll_s`` while anyone
listens, and fans what changed out to every subscriber.  Fifty open pages cost the
database what one does.

A subscriber gets ``Item``s: ``task`` items carry the ``task_events`` id (the SSE id, so
a client resumes with ``Last-Event-ID``), ``progress`` items the stage and progress of a
running task.  A subscriber that falls ``MAX_BACKLOG`` items behind is dropped (its
stream ends and the browser reconnects from its last id: nothing is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from db.models import TaskStatus
from db.reads import Reads
from server.schemas import task_view

log = logging.getLogger("tingji.server.feed")

POLL_SECONDS = 0.5
BATCH = 500
MAX_BACKLOG = 2000


@dataclass(frozen=True, slots=True)
class Item:
    event: str  # "task" | "progress"
    data: dict[str, Any]
    id: int | None = None  # the task_events id of a "task" item


def progress_item(t: Any) -> Item:
    return Item("progress", {"task_id": t.id, "stage": str(t.stage) if t.stage else None,
                             "progress": round(t.progress, 4), "message": t.message})


async def task_items(reads: Reads, rows: list[Any]) -> list[Item]:
    """``task`` items for new event rows: one per task, its latest snapshot, in order."""
    latest: dict[str, tuple[int, str]] = {}
    for e in rows:
        latest[e.task_id] = (e.id, e.event)
    tasks = {t.id: t for t in await reads.tasks_by_ids(list(latest))}
    return [Item("task", {"event": name, "task": task_view(tasks[tid])}, eid)
            for tid, (eid, name) in sorted(latest.items(), key=lambda kv: kv[1][0])
            if tid in tasks]  # a task pruned since has no snapshot


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[Item | None] = field(
        default_factory=lambda: asyncio.Queue(MAX_BACKLOG))
    progress: list[Item] = field(default_factory=list)  # running tasks when it joined


class LiveFeed:
    def __init__(self, reads: Reads, poll_s: float = POLL_SECONDS) -> None:
        self.reads, self.poll_s = reads, poll_s
        self.subscribers: set[Subscription] = set()
        self.last_id: int | None = None
        self.progress: dict[str, Item] = {}
        self._poller: asyncio.Task[None] | None = None

    async def subscribe(self) -> Subscription:
        sub = Subscription(progress=list(self.progress.values()))
        self.subscribers.add(sub)
        if self._poller is None or self._poller.done():
            if self.last_id is None:
                self.last_id = await self.reads.last_event_id()
            self._poller = asyncio.create_task(self._poll(), name="live-feed")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _poll(self) -> None:
        while self.subscribers:
            try:
                items = await self._changes()
            except Exception as exc:  # noqa: BLE001  (database hiccup: try again next round)
                log.warning("live feed: %s", exc)
                items = []
            for sub in list(self.subscribers):
                for item in items:
                    try:
                        sub.queue.put_nowait(item)
                    except asyncio.QueueFull:
                        self.subscribers.discard(sub)
                        with contextlib.suppress(asyncio.QueueEmpty):
                            sub.queue.get_nowait()
                        sub.queue.put_nowait(None)  # ends its stream: it reconnects
                        break
            await asyncio.sleep(self.poll_s)
        self.progress.clear()  # nobody listened for a while: start afresh next time

    async def _changes(self) -> list[Item]:
        items: list[Item] = []
        assert self.last_id is not None
        rows = await self.reads.events_since(self.last_id, limit=BATCH)
        if rows:
            items += await task_items(self.reads, rows)
            self.last_id = rows[-1].id
            for item in items:
                self.progress.pop(item.data["task"].task_id, None)
        running, _ = await self.reads.list_tasks(status=TaskStatus.PROCESSING, limit=200)
        seen = set()
        for t in running:
            seen.add(t.id)
            item = progress_item(t)
            if self.progress.get(t.id) != item:
                self.progress[t.id] = item
                items.append(item)
        for gone in set(self.progress) - seen:
            del self.progress[gone]
        return items

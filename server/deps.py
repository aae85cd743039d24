"""What handlers get by dependency injection, by parameter name: ``queue``, ``reads``,
``settings``, ``feed`` and ``uploads_gate``.  Route modules import these aliases, never the app."""

from __future__ import annotations

from typing import Any

from litestar.di import NamedDependency, Provide

from db.queue import Queue
from db.reads import Reads
from server.feed import LiveFeed
from server.uploads import UploadGate
from tingji.settings import Settings

QueueDep = NamedDependency[Queue]
ReadsDep = NamedDependency[Reads]
SettingsDep = NamedDependency[Settings]
FeedDep = NamedDependency[LiveFeed]
GateDep = NamedDependency[UploadGate]


def provide(**values: Any) -> dict[str, Provide]:
    """Each value, provided under its name (built once by the app, shared by requests)."""
    def const(value: Any) -> Provide:
        return Provide(lambda: value, use_cache=True, sync_to_thread=False)
    return {name: const(value) for name, value in values.items()}

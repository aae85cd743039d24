"""The Litestar application: wiring of settings, the task store, auth and routes.

The API only inserts and reads rows; all work happens in ``worker/`` processes, so it
answers in milliseconds whatever the worker is doing.  It never imports torch,
funasr or yt-dlp.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Litestar, Router
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.static_files import create_static_files_router
from sqlalchemy.ext.asyncio import AsyncEngine

from db.engine import make_engine
from db.queue import Queue
from db.reads import Reads
from server.boundary import make_boundary, security_headers
from server.errors import handle
from server.uploads import sweep_orphans
from tingji import __version__
from tingji.settings import Settings

log = logging.getLogger("tingji.server")
SWEEP_SECONDS = 3600.0
STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    queue: Queue
    reads: Reads


def services(connection: ASGIConnection[Any, Any, Any, Any]) -> Services:
    return connection.app.state.services  # type: ignore[no-any-return]


async def token_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    token = services(connection).settings.api_token
    if not token:
        return
    header = connection.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             token.encode()):
        raise NotAuthorizedException("missing or wrong API token: send "
                                     "'Authorization: Bearer <TINGJI_API_TOKEN>'")


def create_app(settings: Settings) -> Litestar:
    from server.routes import events, process, system, tasks

    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous,
                         pool_size=10)
    svc = Services(settings, engine, Queue.from_settings(engine, settings), Reads(engine))

    async def sweep_uploads() -> None:
        while True:
            try:
                for name in await sweep_orphans(settings.uploads_dir, svc.reads.upload_names):
                    log.info("removed orphaned upload %s (no task refers to it)", name)
            except Exception as exc:  # noqa: BLE001  (a database hiccup: next round)
                log.warning("sweeping orphaned uploads failed: %s", exc)
            await asyncio.sleep(SWEEP_SECONDS)

    sweeper: list[asyncio.Task[None]] = []

    async def on_startup() -> None:
        sweeper.append(asyncio.create_task(sweep_uploads(), name="sweep-uploads"))

    async def on_shutdown() -> None:
        for t in sweeper:
            t.cancel()
        await engine.dispose()

    api = Router(path="/api/v1", guards=[token_guard],
                 route_handlers=[*process.handlers, *tasks.handlers, *system.api_handlers,
                                 *events.handlers])
    static = create_static_files_router(path="/static", directories=[STATIC_DIR],
                                        include_in_schema=False)
    return Litestar(
        route_handlers=[api, static, *system.open_handlers],
        exception_handlers={Exception: handle},
        middleware=[make_boundary(settings.host, settings.allowed_hosts)],
        before_send=[security_headers],
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        state=State({"services": svc}),
        openapi_config=OpenAPIConfig(title="tingji", version=__version__, path="/schema"),
        request_max_body_size=1024 * 1024,
        debug=False,
    )

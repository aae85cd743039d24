"""The Litestar application: wiring of settings, the task store, auth and routes.

The API only inserts and reads rows; all work happens in ``worker/`` processes, so it
answers in milliseconds whatever the worker is doing.  It never imports torch,
funasr or yt-dlp.
"""

from __future__ import annotations

import hmac
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
from server.errors import handle
from tingji import __version__
from tingji.settings import Settings

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

    async def on_shutdown() -> None:
        await engine.dispose()

    api = Router(path="/api/v1", guards=[token_guard],
                 route_handlers=[*process.handlers, *tasks.handlers, *system.api_handlers,
                                 *events.handlers])
    static = create_static_files_router(path="/static", directories=[STATIC_DIR],
                                        include_in_schema=False)
    return Litestar(
        route_handlers=[api, static, *system.open_handlers],
        exception_handlers={Exception: handle},
        on_shutdown=[on_shutdown],
        state=State({"services": svc}),
        openapi_config=OpenAPIConfig(title="tingji", version=__version__, path="/schema"),
        request_max_body_size=1024 * 1024,
        debug=False,
    )

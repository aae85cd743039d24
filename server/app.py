"""The Litestar application: wiring of settings, the task store, auth and routes.

The API only inserts and reads rows; all work happens in ``worker/`` processes, so it
answers in milliseconds whatever the worker is doing.  It never imports torch,
funasr or yt-dlp.  Handlers get the queue, the reads and the settings by dependency
injection (parameters named ``queue``, ``reads``, ``settings``); no route module
imports this one.
"""

from __future__ import annotations

import asyncio
import logging

from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.static_files import create_static_files_router

from db.engine import make_engine
from db.queue import Queue
from db.reads import Reads
from server.auth import token_guard
from server.boundary import make_boundary, security_headers
from server.deps import provide
from server.errors import handle
from server.feed import LiveFeed
from server.routes import audio, events, internal, metrics, openai, process, system, tasks
from server.routes.system import STATIC_DIR
from server.uploads import UploadGate, sweep_orphans
from tingji import __version__
from tingji.settings import Settings

log = logging.getLogger("tingji.server")
SWEEP_SECONDS = 3600.0


def create_app(settings: Settings) -> Litestar:
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous,
                         pool_size=10)
    queue, reads = Queue.from_settings(engine, settings), Reads(engine)
    feed = LiveFeed(reads)

    async def sweep_uploads() -> None:
        while True:
            try:
                for name in await sweep_orphans(settings.uploads_dir, reads.upload_names):
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
        await feed.close()
        await engine.dispose()

    api = Router(path="/api/v1", guards=[token_guard(settings.api_token)],
                 route_handlers=[*process.handlers, *tasks.handlers, *audio.handlers,
                                 *system.api_handlers, *events.handlers, *internal.handlers])
    # the OpenAI audio API, where its clients look for it (same token)
    openai_api = Router(path="/v1", guards=[token_guard(settings.api_token)],
                        route_handlers=openai.handlers)
    scrape = Router(path="/", guards=[token_guard(settings.api_token)],
                    route_handlers=metrics.handlers)
    static = create_static_files_router(path="/static", directories=[STATIC_DIR],
                                        include_in_schema=False)
    return Litestar(
        route_handlers=[api, openai_api, scrape, static, *system.open_handlers],
        dependencies=provide(queue=queue, reads=reads, settings=settings, feed=feed,
                             uploads_gate=UploadGate(
                                 settings.uploads_dir, settings.max_concurrent_uploads,
                                 int(settings.max_pending_upload_gb * 2**30))),
        exception_handlers={Exception: handle},
        middleware=[make_boundary(settings.host, settings.allowed_hosts)],
        before_send=[security_headers],
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        # the schema as JSON and YAML, behind the token when one is set; no HTML viewer
        # (each loads its scripts from a CDN, on the origin where the page keeps the token)
        openapi_config=OpenAPIConfig(
            title="tingji", version=__version__, path="/schema",
            render_plugins=[JsonRenderPlugin(), YamlRenderPlugin()],
            openapi_router=Router(path="/schema", guards=[token_guard(settings.api_token)],
                                  route_handlers=[])),
        request_max_body_size=1024 * 1024,
        debug=False,
        logging_config=None,  # tingji.logs configures the process (text or JSON lines)
    )

"""Health and queue overview."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from litestar import MediaType, Request, Response, get
from litestar.response import File
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from db.queue import utcnow
from server.app import services
from server.errors import body
from server.schemas import QueueView, WorkerView
from tingji import __version__


@get("/health", summary="Liveness and database reachability")
async def health(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    svc = services(request)
    try:
        counts = await svc.reads.counts()
    except Exception as exc:  # noqa: BLE001  (any failure to read means: not healthy)
        out = body("unavailable", f"database not reachable: {type(exc).__name__}")
        out["status"] = "unavailable"
        return Response(out, status_code=HTTP_503_SERVICE_UNAVAILABLE)
    return Response({"status": "ok", "version": __version__, "database": "ok",
                     "queue": counts}, status_code=HTTP_200_OK)


@get("/queue", summary="Queue counts, capacity and workers")
async def queue_view(request: Request[Any, Any, Any]) -> QueueView:
    svc = services(request)
    now = utcnow()
    counts = await svc.reads.counts()
    stale = timedelta(seconds=max(15, svc.settings.lease_seconds))
    workers = [WorkerView(id=w.id, hostname=w.hostname, pid=w.pid, started_at=w.started_at,
                          heartbeat_at=w.heartbeat_at,
                          alive=w.stopped_at is None and now - w.heartbeat_at < stale,
                          model=w.model, model_loaded_at=w.model_loaded_at,
                          model_loads=w.model_loads, current_task_id=w.current_task_id)
               for w in await svc.reads.workers(now=now)]
    return QueueView(capacity=svc.settings.max_pending, workers=workers, **counts)


@get("/", include_in_schema=False, media_type=MediaType.HTML)
async def index() -> File:
    """The web page: plain HTML, CSS and JavaScript from the package (no CDN)."""
    from server.app import STATIC_DIR

    return File(STATIC_DIR / "index.html", content_disposition_type="inline",
                media_type=MediaType.HTML)


open_handlers = [health, index]
api_handlers = [queue_view]

"""Health and queue overview."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from litestar import MediaType, Response, get
from litestar.response import File
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from db.queue import utcnow
from server.deps import ReadsDep, SettingsDep
from server.errors import body
from server.schemas import QueueView, WorkerView
from tingji import __version__

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


@get("/health", summary="Liveness, database reachability and free disk space")
async def health(reads: ReadsDep, settings: SettingsDep) -> Response[dict[str, Any]]:
    try:
        counts = await reads.counts()
    except Exception as exc:  # noqa: BLE001  (any failure to read means: not healthy)
        out = body("unavailable", f"database not reachable: {type(exc).__name__}")
        out["status"] = "unavailable"
        return Response(out, status_code=HTTP_503_SERVICE_UNAVAILABLE)
    try:  # the data folder's disk: uploads, audio, outputs (and SQLite's database)
        free_mb: int | None = round(shutil.disk_usage(settings.data_dir).free / 2**20)
    except OSError:
        free_mb = None
    return Response({"status": "ok", "version": __version__, "database": "ok",
                     "disk_free_mb": free_mb,
                     "queue": counts}, status_code=HTTP_200_OK)


@get("/queue", summary="Queue counts, capacity and workers")
async def queue_view(reads: ReadsDep, settings: SettingsDep) -> QueueView:
    now = utcnow()
    counts = await reads.counts()
    stale = timedelta(seconds=max(15, settings.lease_seconds))
    workers = [WorkerView(id=w.id, hostname=w.hostname, pid=w.pid, started_at=w.started_at,
                          heartbeat_at=w.heartbeat_at,
                          alive=w.stopped_at is None and now - w.heartbeat_at < stale,
                          model=w.model, model_loaded_at=w.model_loaded_at,
                          model_loads=w.model_loads, current_task_id=w.current_task_id)
               for w in await reads.workers(now=now)]
    return QueueView(capacity=settings.max_pending, workers=workers,
                     llm=settings.llm_configured, **counts)


@get("/", include_in_schema=False, media_type=MediaType.HTML)
async def index() -> File:
    """The web page: plain HTML, CSS and JavaScript from the package (no CDN)."""
    return File(STATIC_DIR / "index.html", content_disposition_type="inline",
                media_type=MediaType.HTML)


open_handlers = [health, index]
api_handlers = [queue_view]

"""What workers on other machines need from the API that stored an upload.

A worker that does not find a task's upload on its own disk fetches it here (streamed),
and tells the API when the task completed so the API's copy goes at once (the hourly
sweep would remove it too).  They are off without ``TINGJI_API_TOKEN``: "this machine"
cannot be told from the client's address (behind a reverse proxy on the same machine
every client is loopback), and a worker on the API's machine reads the upload from disk.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, get
from litestar.exceptions import PermissionDeniedException
from litestar.params import FromPath
from litestar.response import File
from litestar.status_codes import HTTP_204_NO_CONTENT, HTTP_404_NOT_FOUND, HTTP_409_CONFLICT

from db.errors import TaskNotFound
from db.models import Task, TaskKind, TaskStatus
from server.deps import ReadsDep, SettingsDep
from server.errors import ApiError
from server.schemas import check_task_id
from tingji.settings import Settings
from tingji.taskfiles import TaskFiles


async def _upload_task(request: Request[Any, Any, Any], reads: ReadsDep, settings: Settings,
                       task_id: str) -> Task:
    if not settings.api_token:
        raise PermissionDeniedException(
            "uploads are served to workers on other machines only with TINGJI_API_TOKEN "
            "set (on the API and on the workers)")
    tid = check_task_id(task_id)
    task = await reads.task(tid)
    if task is None or task.kind != TaskKind.UPLOAD:
        raise TaskNotFound(tid)
    return task


@get("/internal/upload/{task_id:str}", summary="An upload task's file, for its worker",
     include_in_schema=False)
async def upload_file(request: Request[Any, Any, Any], task_id: FromPath[str],
                      reads: ReadsDep,
                      settings: SettingsDep) -> File:
    task = await _upload_task(request, reads, settings, task_id)
    if task.status == TaskStatus.COMPLETED:
        raise ApiError(HTTP_409_CONFLICT, "completed", "the task is completed; its upload is "
                       "no longer kept")
    path = TaskFiles.of(settings.data_dir, task.id, task.payload).upload
    if path is None or not path.is_file():
        raise ApiError(HTTP_404_NOT_FOUND, "upload_gone",
                       "the uploaded file is gone from the API's uploads folder")
    up = task.payload["upload"]
    return File(path, filename=path.name, media_type="application/octet-stream",
                content_disposition_type="attachment",
                headers={"X-Tingji-Size": str(up["size"]), "X-Tingji-Sha256": up["sha256"]})


@delete("/internal/upload/{task_id:str}", summary="Drop a completed task's upload",
        include_in_schema=False, status_code=HTTP_204_NO_CONTENT)
async def drop_upload(request: Request[Any, Any, Any], task_id: FromPath[str],
                      reads: ReadsDep,
                      settings: SettingsDep) -> None:
    task = await _upload_task(request, reads, settings, task_id)
    if task.status != TaskStatus.COMPLETED:
        raise ApiError(HTTP_409_CONFLICT, "not_completed", "only a completed task's upload is "
                       "dropped (a failed one is kept for a retry)")
    TaskFiles.of(settings.data_dir, task.id, task.payload).remove(work=False, upload=True)


handlers = [upload_file, drop_upload]

"""``GET /api/v1/task/{id}/audio``: the task's audio as the worker kept it (Ogg Opus,
``TINGJI_KEEP_AUDIO``), with byte ranges, so that the page's player can seek in it.

Files are small (32 kbit/s: about 14 MB an hour) and read a range at a time in a
thread; the answer is 206 with ``Content-Range`` for a satisfiable range, 416 for one
past the end, and 200 with the whole file without one.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from litestar import Request, Response, get
from litestar.params import FromPath
from litestar.status_codes import HTTP_404_NOT_FOUND, HTTP_409_CONFLICT

from db.models import TaskStatus
from server.deps import ReadsDep, SettingsDep
from server.errors import ApiError
from server.routes.tasks import task_of
from tingji.taskfiles import TaskFiles

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
MAX_CHUNK = 4 * 2**20  # bytes a ranged answer carries at most (the player asks again)


def _read(path: Path, start: int, length: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(start)
        return fh.read(length)


@get("/task/{task_id:str}/audio", summary="The task's audio (Ogg Opus), with byte ranges")
async def task_audio(request: Request, reads: ReadsDep,  # type: ignore[type-arg]
                     settings: SettingsDep, task_id: FromPath[str]) -> Response[bytes]:
    task = await task_of(reads, task_id)
    if task.status != TaskStatus.COMPLETED:
        raise ApiError(HTTP_409_CONFLICT, "not_completed",
                       f"task {task.id} is {task.status}; its audio is kept once it completed")
    path = TaskFiles.of(settings.data_dir, task.id, task.payload).audio
    if not path.is_file():
        kept = (task.result or {}).get("audio")
        raise ApiError(HTTP_404_NOT_FOUND, "no_audio",
                       "the audio was not kept for this task (TINGJI_KEEP_AUDIO=0 when it ran)"
                       if not kept else "the audio is kept on the machine whose worker ran "
                       "the task, not on this API's")
    size = path.stat().st_size
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600"}
    wanted = _RANGE.match(request.headers.get("range", "").strip())
    if wanted is None or wanted.groups() == ("", ""):
        body = await asyncio.to_thread(path.read_bytes)
        return Response(body, media_type="audio/ogg", headers=headers)
    first, last = wanted.groups()
    if first == "":  # the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(size - 1, int(last) if last else size - 1)
    if start >= size or start > end:
        return Response(b"", status_code=416, media_type="audio/ogg",
                        headers={**headers, "Content-Range": f"bytes */{size}"})
    end = min(end, start + MAX_CHUNK - 1)
    body = await asyncio.to_thread(_read, path, start, end - start + 1)
    return Response(body, status_code=206, media_type="audio/ogg",
                    headers={**headers, "Content-Range": f"bytes {start}-{end}/{size}"})


handlers = [task_audio]

"""Following, cancelling, retrying and downloading tasks."""

from __future__ import annotations

import asyncio
import io
import re
import zipfile
from typing import Annotated, Any
from urllib.parse import quote

from litestar import Response, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody, Parameter
from litestar.response import File
from litestar.status_codes import (
    HTTP_202_ACCEPTED,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_501_NOT_IMPLEMENTED,
)

from db.errors import TaskNotFound
from db.models import Task, TaskStatus
from server.deps import QueueDep, ReadsDep, SettingsDep
from server.errors import ApiError, bad_request
from server.schemas import (
    CancelResult,
    EventView,
    TaskList,
    TaskView,
    check_speaker_names,
    check_task_id,
    task_view,
)
from tingji.formats import CONTENT_TYPES, FORMATS, NOTE_FILES, safe_filename, speaker_label
from tingji.pdf import PdfUnavailable, render_pdf
from tingji.results import result_files
from tingji.taskfiles import TaskFiles, source_of, title_of

_PREFIX = re.compile(r"[0-9a-f-]{4,36}")


async def task_of(reads: ReadsDep, task_id: str) -> Task:
    """The task of a path's id; 400 for what is not a UUID, 404 for no such task."""
    tid = check_task_id(task_id)
    task = await reads.task(tid)
    if task is None:
        raise TaskNotFound(tid)
    return task


@get("/task/{task_id:str}", summary="One task's status, progress and result")
async def get_task(reads: ReadsDep, task_id: FromPath[str]) -> TaskView:
    return task_view(await task_of(reads, task_id))


@get("/task/{task_id:str}/events", summary="A task's whole history, oldest first")
async def get_events(reads: ReadsDep, task_id: FromPath[str]) -> list[EventView]:
    task = await task_of(reads, task_id)
    return [EventView(id=e.id, at=e.at, event=e.event, from_status=e.from_status,
                      to_status=e.to_status, worker_id=e.worker_id, detail=e.detail)
            for e in await reads.events(task.id)]


@get("/task/{task_id:str}/segments", summary="Timed transcript sentences")
async def get_segments(reads: ReadsDep, task_id: FromPath[str]) -> list[dict[str, Any]]:
    """Each sentence with its times, its characters' times, its speaker and, where the
    task was translated, its ``translation``."""
    task = await task_of(reads, task_id)
    names = (task.result or {}).get("speaker_names") or {}
    translation = (task.result or {}).get("translation") or {}
    lines = translation.get("sentences") or []
    return [{"start_ms": s.start_ms, "end_ms": s.end_ms, "text": s.text, "chars": s.chars,
             "speaker": speaker_label(s, names),
             **({"translation": lines[i] if i < len(lines) else None} if translation else {})}
            for i, s in enumerate(await reads.segments(task.id))]


@get("/tasks", summary="Tasks, newest first")
async def list_tasks(
    reads: ReadsDep,
    status: FromQuery[str | None] = None,
    batch_id: FromQuery[str | None] = None,
    id_prefix: Annotated[str | None, Parameter(
        description="the first characters of task ids (at least 4), for short ids")] = None,
    limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
    offset: Annotated[int, Parameter(ge=0, le=2**53)] = 0,
) -> TaskList:
    st = None
    if status:
        try:
            st = TaskStatus(status)
        except ValueError:
            raise bad_request(f"status: must be one of "
                              f"{', '.join(s.value for s in TaskStatus)}") from None
    if batch_id:
        batch_id = check_task_id(batch_id, "batch_id")
    if id_prefix is not None and not _PREFIX.fullmatch(id_prefix.lower()):
        raise bad_request("id_prefix: give at least 4 characters of a task id (0-9, a-f, -)")
    tasks, total = await reads.list_tasks(
        status=st, batch_id=batch_id, id_prefix=id_prefix.lower() if id_prefix else None,
        limit=limit, offset=offset)
    return TaskList(tasks=[task_view(t) for t in tasks], total=total, limit=limit,
                    offset=offset)


@post("/task/{task_id:str}/cancel", status_code=200, summary="Cancel a task")
async def cancel_task(queue: QueueDep, task_id: FromPath[str]) -> CancelResult:
    """Pending tasks are cancelled at once; a processing task stops at its worker's next
    check (its status then moves to ``cancelled``)."""
    task = await queue.request_cancel(check_task_id(task_id))
    return CancelResult(task_id=task.id, status=str(task.status))


@patch("/task/{task_id:str}/speakers", summary="Name a completed task's speakers")
async def name_speakers(reads: ReadsDep, queue: QueueDep, settings: SettingsDep,
                        task_id: FromPath[str], data: JSONBody[dict[str, Any]]) -> TaskView:
    """``{"S1": "张老师", "S2": "学生"}``: every download shows the names from then on
    (the labels stay in the database; names are kept in the result), and so do the
    exported files when they are on this machine."""
    task = await task_of(reads, task_id)
    if task.status != TaskStatus.COMPLETED:
        raise ApiError(HTTP_409_CONFLICT, "not_completed",
                       f"task {task.id} is {task.status}; speakers are named once it completed")
    names = check_speaker_names(data, int((task.result or {}).get("speakers") or 0))
    named = await queue.name_speakers(task.id, names)
    files = TaskFiles.of(settings.data_dir, named.id, named.payload)
    if files.results.is_dir() and named.result is not None:  # exported here, not elsewhere
        rendered = result_files(task_id=named.id,
                                title=title_of(named.id, named.title, named.payload),
                                payload=named.payload, result=named.result,
                                segments=await reads.segments(named.id))
        await asyncio.to_thread(files.write_results, rendered)
    return task_view(named)


@post("/task/{task_id:str}/retry", status_code=HTTP_202_ACCEPTED, summary="Retry a task")
async def retry_task(queue: QueueDep, task_id: FromPath[str]) -> CancelResult:
    """Failed or cancelled tasks only; work resumes at the first unfinished stage."""
    task = await queue.retry(check_task_id(task_id))
    return CancelResult(task_id=task.id, status=str(task.status))


@get("/download/{task_id:str}",
     summary="Download the result (txt, md, json, srt, vtt, chapters, mindmap, pdf or zip)")
async def download(reads: ReadsDep, settings: SettingsDep, task_id: FromPath[str],
                   format: FromQuery[str | None] = None,  # noqa: A002
                   lang: Annotated[str | None, Parameter(
                       description="srt and vtt: the translation's language, or "
                                   "'bilingual' (two lines a cue)")] = None
                   ) -> Response[Any]:
    if format is not None and format not in FORMATS:
        raise bad_request(f"format: must be one of {', '.join(FORMATS)} (or absent for a zip)")
    if lang is not None and format not in ("srt", "vtt"):
        raise bad_request("lang: only with format=srt or format=vtt")
    task = await task_of(reads, task_id)
    if task.status != TaskStatus.COMPLETED or task.result is None:
        raise ApiError(HTTP_409_CONFLICT, "not_completed",
                       f"task {task.id} is {task.status}; results exist once it is completed")
    if format == "mp4":
        return _video(task, settings)
    segments = await reads.segments(task.id)
    title = title_of(task.id, task.title, task.payload)
    files = result_files(task_id=task.id, title=title, payload=task.payload,
                         result=task.result, segments=segments,
                         meta={"created_at": task.created_at.isoformat(),
                               "completed_at": task.completed_at.isoformat()
                               if task.completed_at else None})
    stem = safe_filename(task.title, f"tingji-{task.id[:8]}")
    if format in (None, "pdf"):  # rendered in a thread: a second for an hour of speech
        try:
            pdf: bytes | None = await asyncio.to_thread(
                render_pdf, title, source_of(task.payload) or "", task.result, segments,
                task.result.get("speaker_names") or {})
        except PdfUnavailable as exc:
            if format == "pdf":
                raise ApiError(HTTP_501_NOT_IMPLEMENTED, "pdf_unavailable", str(exc)) from None
            pdf = None  # the zip goes without it
    if format == "pdf":
        assert pdf is not None
        content, name, ctype = pdf, f"{stem}.pdf", CONTENT_TYPES["pdf"]
    elif format is None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for ext, text in files.items():
                zf.writestr(f"{stem}.{ext}", text)
            if pdf is not None:
                zf.writestr(f"{stem}.pdf", pdf)
        content, name, ctype = buf.getvalue(), f"{stem}.zip", CONTENT_TYPES["zip"]
    else:
        key = _file_key(task.result, format, lang)
        if key not in files:
            raise ApiError(HTTP_409_CONFLICT, "not_produced", _missing(format, lang))
        content, name = files[key].encode("utf-8"), f"{stem}.{key}"
        ctype = CONTENT_TYPES[format]
    ascii_name = name.encode("ascii", "ignore").decode() or f"tingji-{task.id[:8]}"
    if ascii_name.startswith("."):
        ascii_name = f"tingji-{task.id[:8]}{ascii_name}"
    disposition = (f'attachment; filename="{ascii_name}"; '
                   f"filename*=UTF-8''{quote(name, safe='')}")
    return Response(content, media_type=ctype, headers={"Content-Disposition": disposition})


def _video(task: Task, settings: Any) -> Response[Any]:
    """The video with the subtitles burned in, as a file (it may be large)."""
    video = (task.result or {}).get("video")
    path = TaskFiles.of(settings.data_dir, task.id, task.payload).results / "video.mp4"
    if not video:
        raise ApiError(HTTP_409_CONFLICT, "not_produced", "this task was not asked to burn "
                       "subtitles into a video (submit with burn_subtitles: true)")
    if video.get("error"):
        raise ApiError(HTTP_409_CONFLICT, "no_video", f"no video with subtitles: "
                       f"{video['error']}")
    if not path.is_file():
        raise ApiError(HTTP_404_NOT_FOUND, "no_video", "the video is kept on the machine "
                       "whose worker ran the task, not on this API's")
    name = f"{safe_filename(task.title, f'tingji-{task.id[:8]}')}.mp4"
    return File(path, filename=name, media_type="video/mp4")  # type: ignore[return-value]


def _file_key(result: dict[str, Any], fmt: str, lang: str | None) -> str:
    """Which of ``result_files``' files a download of ``fmt`` (and ``lang``) is."""
    if fmt in NOTE_FILES:
        return NOTE_FILES[fmt]
    if lang is None:
        return fmt
    low = lang.strip().lower()
    done = ((result.get("translation") or {}).get("lang") or "").lower()
    if low != "bilingual" and low != done:
        raise ApiError(HTTP_409_CONFLICT, "not_produced",
                       f"lang: this task was translated into {done}" if done else
                       "lang: this task was not translated (submit with translate: \"en\")")
    return f"{low}.{fmt}"


def _missing(fmt: str, lang: str | None) -> str:
    if fmt == "chapters":
        return "this task has no chapters (submit with chapters: true and an LLM)"
    if fmt == "mindmap":
        return "this task has no mind map (submit with mindmap: true and an LLM)"
    return f"this task has no {fmt} subtitles in {lang!r}"


handlers = [get_task, get_events, get_segments, list_tasks, cancel_task, retry_task, download,
            name_speakers]

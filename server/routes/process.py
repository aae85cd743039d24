"""Submitting work: one URL, one uploaded file, or a batch of URLs.  Each answers 202
with the durable task's id as soon as its row is committed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import uuid
from collections import Counter
from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromQuery, JSONBody
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_202_ACCEPTED,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_502_BAD_GATEWAY,
    HTTP_504_GATEWAY_TIMEOUT,
)

from db.models import TaskKind
from db.values import Enqueued, NewTask
from server.deps import GateDep, QueueDep, ReadsDep, SettingsDep
from server.errors import ApiError, bad_request
from server.schemas import (
    FORM_FIELDS,
    MAX_BATCH,
    BatchRequest,
    BatchSubmitted,
    BilibiliRequest,
    Part,
    PartsView,
    Submitted,
    check_task_id,
    check_url,
    options_from_form,
    options_payload,
)
from server.uploads import StoredUpload, accept_upload
from tingji.urls import check_parts, has_control_chars, is_list_url, url_problem


def _accepted(enq: Enqueued) -> Response[Submitted]:
    """202 for a new task; 200 for the task an idempotency key already names."""
    task = enq.task
    listed = task.kind == TaskKind.LIST
    message = ("task queued" if not listed else
               f"list queued: a worker reads it and adds one task per entry to batch "
               f"{task.batch_id}") if enq.created \
        else f"already submitted with this idempotency key (task is {task.status})"
    return Response(
        Submitted(task_id=task.id, status=str(task.status), message=message,
                  created_at=task.created_at, created=enq.created, kind=str(task.kind),
                  batch_id=task.batch_id),
        status_code=HTTP_202_ACCEPTED if enq.created else HTTP_200_OK,
        headers={"Location": f"/api/v1/task/{task.id}"})


def idempotency_key(request: Request[Any, Any, Any], body_key: str | None) -> str | None:
    """The idempotency key: the body's field or the standard ``Idempotency-Key`` header
    (they must agree when both are given)."""
    header = request.headers.get("idempotency-key")
    if header is None:
        return body_key
    header = header.strip()
    if not header or len(header) > 200 or has_control_chars(header):
        raise bad_request("Idempotency-Key: 1 to 200 characters, no control characters")
    if body_key is not None and body_key != header:
        raise bad_request("idempotency_key and the Idempotency-Key header disagree")
    return header


def request_digest(kind: str, source: Any, options: dict[str, Any], priority: int) -> str:
    """What makes two submissions the same request (the same key with another request is
    a 409): the source (URL, or the uploaded file's name, size and SHA-256), the options
    and the priority."""
    blob = json.dumps([kind, source, options, priority], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@post("/process/bilibili", status_code=HTTP_202_ACCEPTED, summary="Transcribe a URL")
async def process_url(request: Request[Any, Any, Any], data: JSONBody[BilibiliRequest],
                      queue: QueueDep, settings: SettingsDep) -> Response[Submitted]:
    """Any http(s) URL yt-dlp handles: Bilibili BV/av links, b23.tv, direct media files.
    An optional ``batch_id`` (a UUID) files the task under a batch."""
    url = check_url(data.video_url)
    batch_id = check_task_id(data.batch_id, "batch_id") if data.batch_id else None
    options = options_payload(data, settings)
    listed = is_list_url(url) if data.expand is None else data.expand
    if data.parts is not None:
        if listed:
            raise bad_request("parts: a list's entries are all transcribed; parts select "
                              "parts of one video (expand: false reads the URL as one)")
        try:
            options["parts"] = check_parts(data.parts)
        except ValueError as exc:
            raise bad_request(f"parts: {exc}") from None
    kind = TaskKind.LIST if listed else TaskKind.URL
    if listed:  # its entries' tasks join this batch
        batch_id = batch_id or str(uuid.uuid4())
    enq = await queue.enqueue(NewTask(
        kind, {"video_url": url, "options": options,
               "request": request_digest(kind.value, url, options, data.priority)},
        priority=data.priority, idempotency_key=idempotency_key(request, data.idempotency_key)),
        batch_id=batch_id)
    return _accepted(enq)


LIST_TIMEOUT_S = 60.0
_LISTING = asyncio.Semaphore(2)  # listings at once (each a process running yt-dlp)


@get("/bilibili/parts", summary="A video's parts, or a list's entries, without submitting",
     opt={"acts": True})  # it reaches the network: not for other sites' pages
async def list_parts(url: FromQuery[str], settings: SettingsDep) -> PartsView:
    """Reads the page (no download) under the same egress policy as a task, in a child
    process the API kills after 60 s: number, title and duration of each part of a
    multi-part video, or of each video of a list."""
    url = check_url(url, "url")
    async with _LISTING:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.stages.lists", url, str(settings.max_list_items),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), LIST_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ApiError(HTTP_504_GATEWAY_TIMEOUT, "listing_timed_out",
                           f"the page did not answer within {LIST_TIMEOUT_S:.0f} s") from None
    try:
        doc = json.loads(out)
    except ValueError:
        raise ApiError(HTTP_502_BAD_GATEWAY, "listing_failed",
                       "the page could not be read") from None
    if "error" in doc:
        err = doc["error"]
        raise ApiError(HTTP_502_BAD_GATEWAY if err.get("retryable") else
                       HTTP_422_UNPROCESSABLE_ENTITY, "listing_failed", str(err["message"]))
    # is_list: what submitting the URL does by default (one task per entry, or one task)
    return PartsView(url=url, title=doc["title"], is_list=is_list_url(url), count=doc["count"],
                     parts=[Part(**e) for e in doc["entries"]])


async def enqueue_upload(queue: QueueDep, upload: StoredUpload, options: dict[str, Any], *,
                         priority: int = 0, key: str | None = None,
                         batch_id: str | None = None, **extra: Any) -> Enqueued:
    """The task of a stored upload (its size and SHA-256 go into the payload: a worker on
    another machine checks its copy against them).  The stored file is deleted unless a
    new task now refers to it: a refused request, or a key naming an existing task."""
    try:
        digest = request_digest("upload", [upload.filename, upload.size, upload.sha256],
                                options, priority)
        enq = await queue.enqueue(NewTask(
            TaskKind.UPLOAD,
            {"upload": {"stored_name": upload.stored_name, "filename": upload.filename,
                        "size": upload.size, "sha256": upload.sha256,
                        "content_type": upload.content_type},
             "options": options, **extra, "request": digest},
            priority=priority, idempotency_key=key), batch_id=batch_id)
    except BaseException:
        upload.path.unlink(missing_ok=True)
        raise
    if not enq.created:
        upload.path.unlink(missing_ok=True)
    return enq


@post("/process/audio", status_code=HTTP_202_ACCEPTED, summary="Transcribe an uploaded file",
      request_max_body_size=None, opt={"body": "multipart"})
async def process_upload(request: Request[Any, Any, Any], queue: QueueDep, reads: ReadsDep,
                         settings: SettingsDep, uploads_gate: GateDep) -> Response[Submitted]:
    """multipart/form-data: ``file`` (audio or video) plus the options as form fields;
    an optional ``batch_id`` (a UUID) files the task under a batch."""
    upload = await accept_upload(request, settings, reads, uploads_gate, FORM_FIELDS)
    try:
        batch_id = upload.fields.pop("batch_id", None)
        if batch_id is not None:
            batch_id = check_task_id(batch_id.strip(), "batch_id") if batch_id.strip() else None
        opts = options_from_form(upload.fields)
        options = options_payload(opts, settings)
    except BaseException:
        upload.path.unlink(missing_ok=True)
        raise
    return _accepted(await enqueue_upload(
        queue, upload, options, priority=opts.priority, batch_id=batch_id,
        key=idempotency_key(request, opts.idempotency_key)))


@post("/process/batch", status_code=HTTP_202_ACCEPTED, summary="Transcribe a list of URLs")
async def process_batch(request: Request[Any, Any, Any], data: JSONBody[BatchRequest],
                        queue: QueueDep, settings: SettingsDep) -> Response[BatchSubmitted]:
    """One durable task per URL, inserted in one transaction: all or nothing.  With an
    idempotency key, the same request again returns the original batch (200)."""
    if not data.urls:
        raise bad_request("urls: the list is empty")
    if len(data.urls) > MAX_BATCH:
        raise bad_request(f"urls: at most {MAX_BATCH} URLs per batch, got {len(data.urls)}")
    problems = []
    for i, url in enumerate(data.urls):
        why = url_problem(url.strip()) if isinstance(url, str) and url.strip() else "empty"
        if why:
            problems.append(f"urls[{i}] {url[:100]!r}: {why}")
    dupes = [u for u, n in Counter(u.strip() for u in data.urls).items() if n > 1]
    if dupes:
        problems.append("duplicate URLs: " + ", ".join(repr(u[:100]) for u in dupes))
    if problems:
        raise bad_request("; ".join(problems))
    options = options_payload(data, settings)
    key = idempotency_key(request, data.idempotency_key)
    urls = [u.strip() for u in data.urls]
    # every task carries the whole list's digest: the same key with another list is a 409
    digest = request_digest("batch", urls, options, data.priority)
    batch_id, tasks, created = await queue.enqueue_many([
        NewTask(TaskKind.URL, {"video_url": u, "options": options, "request": digest},
                priority=data.priority, idempotency_key=f"{key}/{i}" if key else None)
        for i, u in enumerate(urls)])
    return Response(BatchSubmitted(batch_id=batch_id, task_ids=[t.id for t in tasks],
                                   created=created),
                    status_code=HTTP_202_ACCEPTED if created else HTTP_200_OK,
                    headers={"Location": f"/api/v1/tasks?batch_id={batch_id}"})


handlers = [process_url, process_upload, process_batch, list_parts]

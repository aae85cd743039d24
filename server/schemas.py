"""Request and response shapes of the HTTP API, and the validation shared by the JSON
and the multipart (form) endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from db.models import Task, TaskStatus
from server.errors import bad_request
from tingji.hotwords import check_hotwords, split_hotwords
from tingji.languages import check_language
from tingji.settings import Settings
from tingji.taskfiles import source_of
from tingji.urls import MAX_URL_LENGTH, has_control_chars, url_problem

MAX_BATCH = 500


class TaskOptions(msgspec.Struct, forbid_unknown_fields=True):
    """Options common to every way of submitting."""

    def __post_init__(self) -> None:
        for name in ("llm_model", "idempotency_key"):
            value = getattr(self, name)
            if value is not None and has_control_chars(value):
                raise ValueError(f"{name}: control characters are not allowed")

    polish: bool | None = None
    summarize: bool = False
    # the LLM's notes: chapters on sentence starts, a mind map, a translation into a
    # language ("en", "ja", ...: the subtitles come translated and bilingual too)
    chapters: bool = False
    mindmap: bool = False
    translate: Annotated[str, msgspec.Meta(min_length=2, max_length=20)] | None = None
    # a video's own Chinese subtitles as the transcript, no ASR (None: the server's
    # TINGJI_SUBTITLES_FIRST)
    subtitles_first: bool | None = None
    # the video with its subtitles burned in (download format mp4)
    burn_subtitles: bool = False
    llm_model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(gt=0, le=1_000_000)] | None = None
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    # POSTed (signed) when the task reaches its final status, and when its batch ends
    callback_url: str | None = None
    hotwords: list[str] | None = None  # names and terms to favour (SeACo bias decoder)
    speakers: int | str | None = None  # label speakers: "auto", or how many (2-16)
    # take the sentences of a completed task with the same audio and transcription
    # settings instead of transcribing again (TINGJI_REUSE=0 turns it off everywhere)
    reuse: bool = True


class BilibiliRequest(TaskOptions, forbid_unknown_fields=True):
    video_url: str = ""
    batch_id: str | None = None  # file the task under a batch (a UUID)
    # a list (favourites, collection, series, playlist): one task per entry, as a batch;
    # None: decided by the URL (Bilibili and YouTube list pages)
    expand: bool | None = None
    parts: list[int] | None = None  # of a multi-part video (default: every part)


class BatchRequest(TaskOptions, forbid_unknown_fields=True):
    urls: list[str] = msgspec.field(default_factory=list)


class Submitted(msgspec.Struct):
    task_id: str
    status: str
    message: str
    created_at: datetime
    created: bool = True  # False: the idempotency key named an existing task
    kind: str = "url"
    batch_id: str | None = None  # a list task's batch: its entries' tasks join it


class BatchSubmitted(msgspec.Struct):
    batch_id: str
    task_ids: list[str]
    status: str = "pending"
    created: bool = True  # False: the idempotency key named this existing batch


class Part(msgspec.Struct):
    number: int
    title: str
    url: str | None
    duration_s: float | None


class PartsView(msgspec.Struct):
    url: str
    title: str
    is_list: bool  # True: a list (each entry a video); False: one video and its parts
    count: int
    parts: list[Part]


class ErrorInfo(msgspec.Struct):
    type: str
    message: str
    # a fetch failure's stable class: rate_limited, network, not_found, login_required,
    # geo_blocked, unsupported_url, too_large, ...; None for other failures
    code: str | None = None


class TaskView(msgspec.Struct):
    task_id: str
    kind: str
    status: str
    stage: str | None
    progress: float
    message: str | None
    priority: int
    attempts: int
    max_attempts: int
    error: ErrorInfo | None
    result: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    batch_id: str | None
    source: str | None
    title: str | None
    cancel_requested: bool
    # a pending task's next try (after a retryable failure or a site's refusal)
    next_attempt_at: datetime | None = None


class TaskList(msgspec.Struct):
    tasks: list[TaskView]
    total: int
    limit: int
    offset: int


class CancelResult(msgspec.Struct):
    task_id: str
    status: str


class WorkerView(msgspec.Struct):
    id: str
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    alive: bool
    model: str | None
    model_loaded_at: datetime | None
    model_loads: int
    current_task_id: str | None


class QueueView(msgspec.Struct):
    pending: int
    processing: int
    completed: int
    failed: int
    cancelled: int
    capacity: int
    workers: list[WorkerView]
    llm: bool = False  # an LLM is configured: polish and summaries can run


class EventView(msgspec.Struct):
    id: int
    at: datetime
    event: str
    from_status: str | None
    to_status: str | None
    worker_id: str | None
    detail: dict[str, Any] | None


def task_view(task: Task) -> TaskView:
    err = task.error
    return TaskView(
        task_id=task.id, kind=str(task.kind), status=str(task.status),
        stage=str(task.stage) if task.stage else None, progress=round(task.progress, 4),
        message=task.message, priority=task.priority, attempts=task.attempts,
        max_attempts=task.max_attempts,
        error=ErrorInfo(err.get("type", "Error"), err.get("message", ""), err.get("code"))
        if err else None,
        result=task.result if task.status == TaskStatus.COMPLETED else None,
        created_at=task.created_at, started_at=task.started_at,
        completed_at=task.completed_at, updated_at=task.updated_at, batch_id=task.batch_id,
        source=source_of(task.payload), title=task.title, cancel_requested=task.cancel_requested,
        next_attempt_at=task.run_after if task.status == TaskStatus.PENDING and err
        else None)


def check_url(url: Any, field: str = "video_url") -> str:
    """An http(s) URL yt-dlp may fetch; everything else is a 400 naming the field."""
    if not isinstance(url, str) or not url.strip():
        raise bad_request(f"{field}: a URL is required")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise bad_request(f"{field}: URL longer than {MAX_URL_LENGTH} characters")
    why = url_problem(url)
    if why:
        raise bad_request(f"{field}: {why}")
    return url


def check_task_id(value: str, field: str = "task_id") -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise bad_request(f"{field}: {value[:60]!r} is not a UUID") from None


def options_payload(opts: TaskOptions, settings: Settings) -> dict[str, Any]:
    """Validated options as stored in the task's payload.  What costs the operator money
    is bounded here: ``max_tokens`` by ``TINGJI_LLM_MAX_TOKENS``, ``llm_model`` by the
    configured model and ``TINGJI_LLM_MODELS``."""
    if opts.max_tokens is not None and opts.max_tokens > settings.llm_max_tokens:
        raise bad_request(f"max_tokens: at most {settings.llm_max_tokens} on this server "
                          "(TINGJI_LLM_MAX_TOKENS)")
    if opts.llm_model is not None and not settings.llm_model_allowed(opts.llm_model):
        allowed = [m for m in (settings.llm_model, *settings.llm_models) if m]
        raise bad_request(f"llm_model: {opts.llm_model[:100]!r} is not allowed on this server; "
                          + (f"allowed: {', '.join(allowed)} (TINGJI_LLM_MODELS adds more)"
                             if allowed else "no LLM is configured"))
    options = {
        "polish": settings.llm_configured if opts.polish is None else opts.polish,
        "summarize": opts.summarize, "llm_model": opts.llm_model,
        "temperature": opts.temperature, "max_tokens": opts.max_tokens,
    }
    options.update(notes_options(opts, settings))
    if opts.callback_url is not None:  # reached under the egress policy, like media URLs
        options["callback_url"] = check_url(opts.callback_url, "callback_url")
    if opts.hotwords:
        try:
            options["hotwords"] = check_hotwords(opts.hotwords)
        except ValueError as exc:
            raise bad_request(f"hotwords: {exc}") from None
    if opts.speakers is not None:
        options["speakers"] = check_speakers(opts.speakers)
    if not opts.reuse:
        options["reuse"] = False
    if opts.subtitles_first is not None:
        options["subtitles_first"] = opts.subtitles_first
    if opts.burn_subtitles:
        options["burn_subtitles"] = True
    return options


def notes_options(opts: TaskOptions, settings: Settings) -> dict[str, Any]:
    """``chapters``, ``mindmap``, ``translate``: each needs an LLM, so a server without
    one refuses them at once instead of completing the task without them."""
    out: dict[str, Any] = {}
    asked = [name for name in ("chapters", "mindmap") if getattr(opts, name)]
    if opts.translate is not None:
        try:
            out["translate"] = check_language(opts.translate)
        except ValueError as exc:
            raise bad_request(f"translate: {exc}") from None
        asked.append("translate")
    if asked and not settings.llm_configured:
        raise bad_request(f"{', '.join(asked)}: written by an LLM, and none is configured "
                          "on this server (TINGJI_LLM_BASE_URL)")
    out.update({name: True for name in ("chapters", "mindmap") if getattr(opts, name)})
    return out


MAX_SPEAKERS = 16


def check_speakers(value: int | str) -> int | str:
    """``"auto"`` (the clustering decides) or an expected count, 2 to 16."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if not 2 <= n <= MAX_SPEAKERS or isinstance(value, bool):
        raise bad_request(f"speakers: \"auto\" or a number of speakers from 2 to "
                          f"{MAX_SPEAKERS}, not {str(value)[:20]!r}")
    return n


def check_speaker_names(names: dict[str, Any], speakers: int) -> dict[str, str]:
    """``{"S1": "张老师"}``: labels the task has, names of 1-40 characters."""
    out: dict[str, str] = {}
    for key, name in names.items():
        if key not in {f"S{i}" for i in range(1, speakers + 1)}:
            raise bad_request(f"speakers: {key[:20]!r} is not one of this task's speakers "
                              f"(S1 to S{speakers})" if speakers else
                              "speakers: this task has no speaker labels")
        name = " ".join(str(name).split()) if isinstance(name, str) else ""
        if not name or len(name) > 40 or has_control_chars(str(names[key])) \
                or any(c in name for c in "[]"):
            raise bad_request(f"speakers: the name for {key} must be 1 to 40 characters, "
                              "without brackets or control characters")
        out[key] = name
    return out


_FORM_FIELDS = {f for f in TaskOptions.__struct_fields__}
FORM_FIELDS = frozenset({*_FORM_FIELDS, "batch_id"})  # what the upload form may carry


def options_from_form(fields: dict[str, str]) -> TaskOptions:
    """Form fields (strings) -> validated options, with the same rules as JSON."""
    unknown = set(fields) - _FORM_FIELDS
    if unknown:
        raise bad_request(f"unknown form field(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name, raw in fields.items():
        raw = raw.strip()
        if name in ("polish", "summarize", "reuse", "chapters", "mindmap", "subtitles_first",
                    "burn_subtitles"):
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                values[name] = True
            elif low in ("0", "false", "no", "off"):
                values[name] = False
            elif low == "" and name == "polish":
                continue
            else:
                raise bad_request(f"{name}: expected true or false, got {raw[:40]!r}")
        elif name in ("priority", "max_tokens"):
            try:
                values[name] = int(raw)
            except ValueError:
                raise bad_request(f"{name}: expected an integer, got {raw[:40]!r}") from None
        elif name == "hotwords":  # a form field: words separated by spaces or commas
            values[name] = split_hotwords(raw)
        elif name == "temperature":
            try:
                values[name] = float(raw)
            except ValueError:
                raise bad_request(f"{name}: expected a number, got {raw[:40]!r}") from None
        elif raw:
            values[name] = raw
    try:
        return msgspec.convert(values, TaskOptions)
    except msgspec.ValidationError as exc:
        raise bad_request(str(exc).replace("$.", "")) from None

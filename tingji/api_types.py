"""The HTTP API's shapes as tingji's client sees them: the options a submission takes,
a task, a page of tasks, an event, and the client's errors.  ``tingji.client``
re-exports every name; import them from there."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("completed", "failed", "cancelled")
Format = Literal["txt", "md", "json", "srt", "vtt", "chapters", "mindmap", "pdf", "mp4"]
Status = Literal["pending", "processing", "completed", "failed", "cancelled"]


class TaskOptions(TypedDict, total=False):
    """What a submission may ask for (the API's field names)."""

    polish: bool  # LLM polish (default: when the service has an LLM configured)
    summarize: bool  # also an LLM summary
    chapters: bool  # LLM chapters, each starting on a sentence
    mindmap: bool  # an LLM mind map (Mermaid: download format "mindmap")
    translate: str  # a language code: the LLM translates sentence by sentence
    subtitles_first: bool  # URLs: the video's own Chinese subtitles instead of ASR
    burn_subtitles: bool  # also the video with the subtitles burned in (format mp4)
    llm_model: str
    temperature: float
    max_tokens: int
    priority: int  # higher runs first; -1000..1000
    idempotency_key: str  # the same key again names the same task
    callback_url: str  # a webhook POSTed when the task finishes
    hotwords: list[str]  # names and terms to favour
    speakers: int | Literal["auto"]  # label who speaks: "auto" or 2-16
    reuse: bool  # False: transcribe even when a finished task had the same audio
    parts: list[int]  # URLs only: parts of a multi-part video
    expand: bool  # URLs only: the URL is a list, one task per entry


class ErrorInfo(TypedDict):
    type: str
    message: str
    code: str | None  # a fetch failure's class: rate_limited, not_found, ...


class Task(TypedDict):
    task_id: str
    kind: str
    status: Status
    stage: str | None
    progress: float  # 0..1
    message: str | None
    priority: int
    attempts: int
    max_attempts: int
    error: ErrorInfo | None
    result: dict[str, Any] | None  # text, duration_s, segments, stage_seconds, ...
    created_at: str
    started_at: str | None
    completed_at: str | None
    updated_at: str
    batch_id: str | None
    source: str | None
    title: str | None
    cancel_requested: bool
    next_attempt_at: str | None  # a pending task's next try after a failure


class Submitted(TypedDict, total=False):
    task_id: str
    status: str
    message: str
    created_at: str
    created: bool  # False: the idempotency key named an existing task
    kind: str
    batch_id: str | None


class BatchSubmitted(TypedDict):
    batch_id: str
    task_ids: list[str]
    status: str
    created: bool


class TaskPage(TypedDict):
    tasks: list[Task]
    total: int
    limit: int
    offset: int


class Event(TypedDict):
    id: int
    at: str
    event: str
    from_status: str | None
    to_status: str | None
    worker_id: str | None
    detail: dict[str, Any] | None


class ClientError(Exception):
    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


class WaitTimeout(ClientError):
    """``wait`` ran out of time; the task goes on.  ``task`` is its last state."""

    def __init__(self, task: Task, seconds: float):
        super().__init__(f"task {task['task_id']} is still {task['status']} after "
                         f"{seconds:g} s; it goes on in the service")
        self.task = task

"""The values the queue takes and gives: plain frozen dataclasses, so the worker and the
API can name them without importing the queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from db.models import Task, TaskKind


@dataclass(frozen=True, slots=True)
class TaskError:
    """What went wrong, as users see it: never a traceback."""

    type: str
    message: str
    retryable: bool
    code: str | None = None  # a fetch failure's class (rate_limited, not_found, ...)
    # tried again later without using up an attempt (a site's refusal, the network),
    # for as long as the queue's deferral window allows
    deferrable: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "message": self.message,
                               "retryable": self.retryable}
        if self.code is not None:
            out["code"] = self.code
        return out


def request_of(payload: dict[str, Any] | None) -> Any:
    """What identifies a submission, for idempotency: its ``request`` digest when the API
    stored one (an upload's generated file name differs on every try), else the payload."""
    payload = payload or {}
    return payload.get("request", payload)


@dataclass(frozen=True, slots=True)
class NewTask:
    kind: TaskKind
    payload: dict[str, Any]
    priority: int = 0
    idempotency_key: str | None = None
    max_attempts: int | None = None


@dataclass(frozen=True, slots=True)
class Enqueued:
    task: Task
    created: bool  # False: an idempotency key matched a live task, which is returned


@dataclass(frozen=True, slots=True)
class SegmentRow:
    start_ms: int
    end_ms: int
    text: str
    # [start_ms, end_ms] of each token the model timed: with paraformer-zh one per spoken
    # Chinese character (punctuation has none)
    chars: list[list[int]] | None = None
    speaker: int | None = None  # 0, 1, ...: shown as S1, S2, ... (None: not labelled)


@dataclass(frozen=True, slots=True)
class Partial:
    """A transcription in progress, as its checkpoints keep it (``transcribe_partials``
    and ``transcribe_pieces``): what identifies its decoding, the VAD result (funasr's
    shape), how many pieces the VAD cut, and the decoded ones by index."""

    key: str
    vad: list[dict[str, Any]]
    pieces: int
    speech_s: float
    decoded: dict[int, dict[str, Any]]
    decoded_s: float  # seconds of speech in ``decoded``


@dataclass(frozen=True, slots=True)
class LeaseBeat:
    """One held task in a worker's heartbeat."""

    task_id: str
    progress: float | None = None
    message: str | None = None

"""The schema: SQLAlchemy 2.0 typed models for tasks, their event history, stage
checkpoints, transcript segments and the worker registry.

The schema changes only through Alembic (``migrations/``); ``alembic check`` keeps
these models and the migrations in step.  Nothing outside ``db/queue.py`` writes
``tasks.status``.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class TaskStatus(enum.StrEnum):
    PENDING = "pending"  # waiting; claim_next moves it to processing, request_cancel to cancelled
    PROCESSING = "processing"  # leased; complete/fail/release/cancel or lease expiry move it
    COMPLETED = "completed"  # terminal; only prune removes it
    FAILED = "failed"  # terminal unless a user calls retry (-> pending)
    CANCELLED = "cancelled"  # terminal unless a user calls retry (-> pending)


TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

# Every status change the queue may make; db/queue.py asserts against this table.
TRANSITIONS: frozenset[tuple[TaskStatus, TaskStatus]] = frozenset({
    (TaskStatus.PENDING, TaskStatus.PROCESSING),  # claim_next
    (TaskStatus.PENDING, TaskStatus.CANCELLED),  # request_cancel
    (TaskStatus.PROCESSING, TaskStatus.COMPLETED),  # complete
    (TaskStatus.PROCESSING, TaskStatus.PENDING),  # fail (retryable), release, requeue_expired
    (TaskStatus.PROCESSING, TaskStatus.FAILED),  # fail (permanent / exhausted), requeue_expired
    (TaskStatus.PROCESSING, TaskStatus.CANCELLED),  # mark_cancelled after request_cancel
    (TaskStatus.FAILED, TaskStatus.PENDING),  # retry
    (TaskStatus.CANCELLED, TaskStatus.PENDING),  # retry
})


class TaskKind(enum.StrEnum):
    URL = "url"
    UPLOAD = "upload"
    LIST = "list"  # a playlist URL: its worker adds one URL task per entry (a batch)


class Stage(enum.StrEnum):
    FETCH = "fetch"
    TRANSCRIBE = "transcribe"
    POLISH = "polish"
    SUMMARIZE = "summarize"
    CHAPTERS = "chapters"  # the LLM's notes (worker/notes.py), each asked for per task
    MINDMAP = "mindmap"
    TRANSLATE = "translate"
    EXPORT = "export"



class EventType(enum.StrEnum):
    ENQUEUED = "enqueued"
    CLAIMED = "claimed"
    STAGE_STARTED = "stage_started"
    STAGE_COMPLETED = "stage_completed"
    RETRY_SCHEDULED = "retry_scheduled"
    LEASE_EXPIRED = "lease_expired"
    RELEASED = "released"
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"
    FAILED = "failed"
    COMPLETED = "completed"
    RETRIED = "retried"  # a user asked to run a failed/cancelled task again
    # webhooks (db.queue's outbox): one event per delivery attempt's outcome
    WEBHOOK_DELIVERED = "webhook_delivered"
    WEBHOOK_RETRY = "webhook_retry"
    WEBHOOK_FAILED = "webhook_failed"
    SPEAKERS_NAMED = "speakers_named"  # a user named a completed task's speakers
    # a worker took over a transcription another run had partly done (details: from_s,
    # the seconds of speech already decoded, and segments, the pieces)
    TRANSCRIBE_RESUMED = "transcribe_resumed"
    # a task took the sentences of a completed task with the same audio and settings
    # (details: from_task) instead of transcribing
    TRANSCRIPT_REUSED = "transcript_reused"
    PLATFORM_SUBTITLES_USED = "platform_subtitles_used"  # the video's own, not ASR
    # the worker that ran this task last recycled itself after it: its memory had grown
    # past TINGJI_WORKER_MAX_RSS_MB (details: rss_mb, limit_mb, worker_id)
    WORKER_RECYCLED = "worker_recycled"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its next attempt (or leased by a dispatcher)
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # every attempt was refused; kept for the record


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends.

    PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text
    (``2026-11-26 07:31:47.123456``), which sorts and compares correctly in plain SQL.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; pass an aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(cls, name=name, native_enum=False, create_constraint=True, length=16,
                values_callable=lambda e: [m.value for m in e], validate_strings=True)


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[TaskKind] = mapped_column(_enum(TaskKind, "task_kind"))
    status: Mapped[TaskStatus] = mapped_column(_enum(TaskStatus, "task_status"))
    stage: Mapped[Stage | None] = mapped_column(_enum(Stage, "task_stage"))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    run_after: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    batch_id: Mapped[str | None] = mapped_column(String(36))
    # what identifies the task's transcript once transcribed: the normalized audio's
    # SHA-256 with what changes a transcription (worker.reuse); a later task with the
    # same one takes its sentences instead of transcribing again
    transcript_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress_range"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        CheckConstraint("max_attempts >= 1", name="max_attempts_positive"),
        # The claim path: pending tasks in claim order.  Partial, so it stays as small
        # as the backlog however long the history grows.
        Index("ix_tasks_claim", text("priority DESC"), "created_at", "id",
              sqlite_where=text("status = 'pending'"),
              postgresql_where=text("status = 'pending'")),
        # Lease rescue scans only processing tasks.
        Index("ix_tasks_lease", "lease_expires_at",
              sqlite_where=text("status = 'processing'"),
              postgresql_where=text("status = 'processing'")),
        # An idempotency key names one task for as long as the task exists.
        Index("uq_tasks_idempotency_key", "idempotency_key", unique=True),
        Index("ix_tasks_batch_id", "batch_id"),
        Index("ix_tasks_transcript_key", "transcript_key"),
        # No plain index on status: SQLite's planner would pick it for the claim and
        # sort every pending row, instead of walking ix_tasks_claim in order.
        Index("ix_tasks_created_at", "created_at"),
    )


class TaskEvent(Base):
    """Append-only: one row for each transition, written in the same transaction."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(36),
                                         ForeignKey("tasks.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    event: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    worker_id: Mapped[str | None] = mapped_column(String(36))
    detail: Mapped[dict[str, Any] | None]

    __table_args__ = (Index("ix_task_events_task_id", "task_id", "id"),)


class TaskStage(Base):
    """A finished stage's checkpoint: what the next stage (or a retry) resumes from."""

    __tablename__ = "task_stages"

    task_id: Mapped[str] = mapped_column(String(36), ForeignKey("tasks.id", ondelete="CASCADE"),
                                         primary_key=True)
    stage: Mapped[Stage] = mapped_column(_enum(Stage, "checkpoint_stage"), primary_key=True)
    completed_at: Mapped[datetime]
    seconds: Mapped[float | None] = mapped_column(Float)
    worker_id: Mapped[str | None] = mapped_column(String(36))
    output: Mapped[dict[str, Any]]


class Segment(Base):
    """One sentence of a transcript with its timestamps (subtitles come from these)."""

    __tablename__ = "segments"

    task_id: Mapped[str] = mapped_column(String(36), ForeignKey("tasks.id", ondelete="CASCADE"),
                                         primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    start_ms: Mapped[int] = mapped_column(Integer)
    end_ms: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    # [[start_ms, end_ms], ...] per timed token: paraformer-zh, one per spoken character
    chars: Mapped[list[list[int]] | None] = mapped_column(JSON)
    speaker: Mapped[int | None] = mapped_column(Integer)  # 0, 1, ... (S1, S2, ...)

    __table_args__ = (CheckConstraint("end_ms >= start_ms", name="segment_order"),)


class TranscribePartial(Base):
    """A transcription in progress (``worker.checkpoints``): what identifies its decoding
    (engine, device, models, hotwords), what the VAD found and how many pieces that cut;
    its decoded pieces are ``transcribe_pieces``.  A worker that takes the task over
    decodes only the rest.  Gone once the transcribe stage is checkpointed, or when the
    audio is fetched again."""

    __tablename__ = "transcribe_partials"

    task_id: Mapped[str] = mapped_column(String(36), ForeignKey("tasks.id", ondelete="CASCADE"),
                                         primary_key=True)
    key: Mapped[str] = mapped_column(Text)
    vad: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    pieces: Mapped[int] = mapped_column(Integer)
    speech_s: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime]
    worker_id: Mapped[str | None] = mapped_column(String(36))


class TranscribePiece(Base):
    """One decoded speech piece of a transcription in progress: its place in the split
    (``idx``), its seconds, and the engine's result for it (text, token times)."""

    __tablename__ = "transcribe_pieces"

    task_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("transcribe_partials.task_id", ondelete="CASCADE"),
        primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seconds: Mapped[float] = mapped_column(Float)
    result: Mapped[dict[str, Any]]


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    # the host's boot (Linux: /proc/sys/kernel/random/boot_id): a worker of another boot
    # is dead whatever its pid, which a new boot may reuse
    boot_id: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    stopped_at: Mapped[datetime | None]
    model: Mapped[str | None] = mapped_column(Text)
    model_loaded_at: Mapped[datetime | None]
    model_loads: Mapped[int] = mapped_column(Integer, default=0)
    current_task_id: Mapped[str | None] = mapped_column(String(36))

    __table_args__ = (Index("ix_workers_heartbeat_at", "heartbeat_at"),)


class WebhookDelivery(Base):
    """The webhook outbox: one row per message to one receiver, written in the same
    transaction as the status change it reports, then sent (and retried) by a worker's
    dispatcher.  Its id is the stable delivery id receivers dedupe on."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # the task whose final status this reports (for a batch: the task that finished it)
    task_id: Mapped[str] = mapped_column(String(36),
                                         ForeignKey("tasks.id", ondelete="CASCADE"))
    batch_id: Mapped[str | None] = mapped_column(String(36))
    event: Mapped[str] = mapped_column(String(32))  # task.completed, batch.finished, ...
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[dict[str, Any]]
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus, "delivery_status"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        # the dispatcher's scan: pending deliveries by when they are due
        Index("ix_webhook_deliveries_due", "next_attempt_at",
              sqlite_where=text("status = 'pending'"),
              postgresql_where=text("status = 'pending'")),
        Index("ix_webhook_deliveries_task_id", "task_id"),
        # whether a batch's end was announced (it is, once)
        Index("ix_webhook_deliveries_batch_id", "batch_id"),
    )

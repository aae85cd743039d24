"""tasks.kind 'list': a task that expands a playlist URL into a batch

SQLite cannot change a CHECK constraint in place: the table is rebuilt the way SQLite's
documentation prescribes (new table, copy, drop, rename, indexes), with foreign keys
off for the migration (``migrations/env.py``, which checks them before committing), so
dropping the old table cascades to nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 19:40:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SQLITE_TASKS = """
CREATE TABLE tasks_rebuilt (
    id VARCHAR(36) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    status VARCHAR(16) NOT NULL,
    stage VARCHAR(16),
    progress FLOAT NOT NULL,
    message TEXT,
    title TEXT,
    priority INTEGER NOT NULL,
    payload JSON NOT NULL,
    result JSON,
    error JSON,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    run_after DATETIME NOT NULL,
    lease_owner VARCHAR(36),
    lease_expires_at DATETIME,
    cancel_requested BOOLEAN NOT NULL,
    idempotency_key VARCHAR(200),
    batch_id VARCHAR(36),
    created_at DATETIME NOT NULL,
    started_at DATETIME,
    completed_at DATETIME,
    updated_at DATETIME NOT NULL,
    CONSTRAINT pk_tasks PRIMARY KEY (id),
    CONSTRAINT ck_tasks_attempts_nonnegative CHECK (attempts >= 0),
    CONSTRAINT ck_tasks_max_attempts_positive CHECK (max_attempts >= 1),
    CONSTRAINT ck_tasks_progress_range CHECK (progress >= 0 AND progress <= 1),
    CONSTRAINT ck_tasks_task_kind CHECK (kind IN ({kinds})),
    CONSTRAINT ck_tasks_task_status CHECK (status IN ('pending', 'processing', 'completed',
                                                     'failed', 'cancelled')),
    CONSTRAINT ck_tasks_task_stage CHECK (stage IN ('fetch', 'transcribe', 'polish',
                                                   'summarize', 'export'))
)"""

_SQLITE_INDEXES = [
    "CREATE INDEX ix_tasks_batch_id ON tasks (batch_id)",
    "CREATE INDEX ix_tasks_claim ON tasks (priority DESC, created_at, id) "
    "WHERE status = 'pending'",
    "CREATE INDEX ix_tasks_created_at ON tasks (created_at)",
    "CREATE INDEX ix_tasks_lease ON tasks (lease_expires_at) WHERE status = 'processing'",
    "CREATE UNIQUE INDEX uq_tasks_idempotency_key ON tasks (idempotency_key)",
]


def _kinds(kinds: Sequence[str]) -> None:
    listed = ", ".join(f"'{k}'" for k in kinds)
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
            raise RuntimeError("rebuilding tasks with foreign keys on would delete every "
                               "task's events: run migrations through tingji's env.py")
        op.execute(_SQLITE_TASKS.replace("{kinds}", listed))
        op.execute("INSERT INTO tasks_rebuilt SELECT * FROM tasks")
        op.execute("DROP TABLE tasks")
        op.execute("ALTER TABLE tasks_rebuilt RENAME TO tasks")
        for ddl in _SQLITE_INDEXES:
            op.execute(ddl)
    else:
        op.execute("ALTER TABLE tasks DROP CONSTRAINT ck_tasks_task_kind")
        op.execute(f"ALTER TABLE tasks ADD CONSTRAINT ck_tasks_task_kind "
                   f"CHECK (kind IN ({listed}))")


def upgrade() -> None:
    _kinds(["url", "upload", "list"])


def downgrade() -> None:
    # a list task has done its work once expanded; its batch's tasks are plain URL tasks
    op.execute("DELETE FROM tasks WHERE kind = 'list'")
    _kinds(["url", "upload"])

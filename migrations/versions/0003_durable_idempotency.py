"""idempotency keys name one task for as long as it exists, whatever its status

Before, a key named at most one *live* task, so finished tasks could share one.  Where
they do, the key stays on the task that is live, else on the newest one; the others
keep their rows and lose the key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 15:50:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = "status IN ('pending', 'processing')"


def upgrade() -> None:
    op.execute(sa.text(f"""
        UPDATE tasks SET idempotency_key = NULL
        WHERE idempotency_key IS NOT NULL AND id <> (
            SELECT t2.id FROM tasks t2 WHERE t2.idempotency_key = tasks.idempotency_key
            ORDER BY CASE WHEN t2.{LIVE} THEN 0 ELSE 1 END, t2.created_at DESC, t2.id DESC
            LIMIT 1)"""))
    with op.batch_alter_table('tasks') as batch:
        batch.drop_index('uq_tasks_idempotency_live', sqlite_where=sa.text(LIVE),
                         postgresql_where=sa.text(LIVE))
        batch.create_index('uq_tasks_idempotency_key', ['idempotency_key'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.drop_index('uq_tasks_idempotency_key')
        batch.create_index('uq_tasks_idempotency_live', ['idempotency_key'], unique=True,
                           sqlite_where=sa.text(LIVE), postgresql_where=sa.text(LIVE))

"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 07:36:41.742994
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('tasks',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.Enum('url', 'upload', name='task_kind', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('status', sa.Enum('pending', 'processing', 'completed', 'failed', 'cancelled', name='task_status', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('stage', sa.Enum('fetch', 'transcribe', 'polish', 'summarize', 'export', name='task_stage', native_enum=False, create_constraint=True, length=16), nullable=True),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('title', sa.Text(), nullable=True),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('run_after', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_owner', sa.String(length=36), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('batch_id', sa.String(length=36), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('attempts >= 0', name=op.f('ck_tasks_attempts_nonnegative')),
    sa.CheckConstraint('max_attempts >= 1', name=op.f('ck_tasks_max_attempts_positive')),
    sa.CheckConstraint('progress >= 0 AND progress <= 1', name=op.f('ck_tasks_progress_range')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks'))
    )
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index('ix_tasks_batch_id', ['batch_id'], unique=False)
        # The claim path, in claim order (priority DESC, created_at), pending rows only.
        batch_op.create_index('ix_tasks_claim', [sa.text('priority DESC'), 'created_at', 'id'],
                              unique=False, sqlite_where=sa.text("status = 'pending'"),
                              postgresql_where=sa.text("status = 'pending'"))
        batch_op.create_index('ix_tasks_created_at', ['created_at'], unique=False)
        batch_op.create_index('ix_tasks_lease', ['lease_expires_at'], unique=False, sqlite_where=sa.text("status = 'processing'"), postgresql_where=sa.text("status = 'processing'"))
        batch_op.create_index('uq_tasks_idempotency_live', ['idempotency_key'], unique=True, sqlite_where=sa.text("status IN ('pending', 'processing')"), postgresql_where=sa.text("status IN ('pending', 'processing')"))

    op.create_table('workers',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('model', sa.Text(), nullable=True),
    sa.Column('model_loaded_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('model_loads', sa.Integer(), nullable=False),
    sa.Column('current_task_id', sa.String(length=36), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workers'))
    )
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.create_index('ix_workers_heartbeat_at', ['heartbeat_at'], unique=False)

    op.create_table('segments',
    sa.Column('task_id', sa.String(length=36), nullable=False),
    sa.Column('idx', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('start_ms', sa.Integer(), nullable=False),
    sa.Column('end_ms', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.CheckConstraint('end_ms >= start_ms', name=op.f('ck_segments_segment_order')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_segments_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', 'idx', name=op.f('pk_segments'))
    )
    op.create_table('task_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task_id', sa.String(length=36), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('from_status', sa.String(length=16), nullable=True),
    sa.Column('to_status', sa.String(length=16), nullable=True),
    sa.Column('worker_id', sa.String(length=36), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_events_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_events'))
    )
    with op.batch_alter_table('task_events', schema=None) as batch_op:
        batch_op.create_index('ix_task_events_task_id', ['task_id', 'id'], unique=False)

    op.create_table('task_stages',
    sa.Column('task_id', sa.String(length=36), nullable=False),
    sa.Column('stage', sa.Enum('fetch', 'transcribe', 'polish', 'summarize', 'export', name='checkpoint_stage', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('worker_id', sa.String(length=36), nullable=True),
    sa.Column('output', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_stages_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', 'stage', name=op.f('pk_task_stages'))
    )


def downgrade() -> None:
    op.drop_table('task_stages')
    with op.batch_alter_table('task_events', schema=None) as batch_op:
        batch_op.drop_index('ix_task_events_task_id')

    op.drop_table('task_events')
    op.drop_table('segments')
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_index('ix_workers_heartbeat_at')

    op.drop_table('workers')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('uq_tasks_idempotency_live', sqlite_where=sa.text("status IN ('pending', 'processing')"), postgresql_where=sa.text("status IN ('pending', 'processing')"))
        batch_op.drop_index('ix_tasks_lease', sqlite_where=sa.text("status = 'processing'"), postgresql_where=sa.text("status = 'processing'"))
        batch_op.drop_index('ix_tasks_created_at')
        batch_op.drop_index('ix_tasks_batch_id')
        batch_op.drop_index('ix_tasks_claim')

    op.drop_table('tasks')

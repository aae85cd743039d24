"""transcribe_partials and transcribe_pieces: a transcription's decoded pieces, kept as it
runs, so that a worker taking the task over decodes only the rest; tasks.transcript_key:
what identifies a transcript, so that the same audio is not transcribed twice

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 19:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('transcript_key', sa.String(length=64), nullable=True))
        batch.create_index('ix_tasks_transcript_key', ['transcript_key'])
    op.create_table(
        'transcribe_partials',
        sa.Column('task_id', sa.String(length=36), nullable=False),
        sa.Column('key', sa.Text(), nullable=False),
        sa.Column('vad', sa.JSON(), nullable=False),
        sa.Column('pieces', sa.Integer(), nullable=False),
        sa.Column('speech_s', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('worker_id', sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], ondelete='CASCADE',
                                name=op.f('fk_transcribe_partials_task_id_tasks')),
        sa.PrimaryKeyConstraint('task_id', name=op.f('pk_transcribe_partials')),
    )
    op.create_table(
        'transcribe_pieces',
        sa.Column('task_id', sa.String(length=36), nullable=False),
        sa.Column('idx', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('seconds', sa.Float(), nullable=False),
        sa.Column('result', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['task_id'], ['transcribe_partials.task_id'],
                                ondelete='CASCADE',
                                name=op.f('fk_transcribe_pieces_task_id_transcribe_partials')),
        sa.PrimaryKeyConstraint('task_id', 'idx', name=op.f('pk_transcribe_pieces')),
    )


def downgrade() -> None:
    op.drop_table('transcribe_pieces')
    op.drop_table('transcribe_partials')
    with op.batch_alter_table('tasks') as batch:
        batch.drop_index('ix_tasks_transcript_key')
        batch.drop_column('transcript_key')

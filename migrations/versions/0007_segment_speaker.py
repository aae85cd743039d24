"""segments.speaker: who speaks each sentence (0, 1, ...; shown as S1, S2, ...)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 20:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('segments') as batch:
        batch.add_column(sa.Column('speaker', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('segments') as batch:
        batch.drop_column('speaker')

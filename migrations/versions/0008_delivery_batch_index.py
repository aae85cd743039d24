"""webhook_deliveries.batch_id indexed: whether a batch's end was announced is one lookup

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 13:15:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_webhook_deliveries_batch_id', 'webhook_deliveries', ['batch_id'])


def downgrade() -> None:
    op.drop_index('ix_webhook_deliveries_batch_id', table_name='webhook_deliveries')

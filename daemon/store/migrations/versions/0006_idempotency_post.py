"""idempotency_keys.post_id: the post a running POST /posts/publish inserted, so a retry that
takes the key over after its process died waits for that post instead of publishing again

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 20:05:00.000000
"""

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('idempotency_keys', sa.Column('post_id', sa.String(length=24), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('idempotency_keys') as batch:
        batch.drop_column('post_id')

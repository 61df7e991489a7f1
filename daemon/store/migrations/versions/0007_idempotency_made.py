"""idempotency_keys.made: a running POST /posts/schedule/bulk's posts so far ({item: post id}),
each written with its post, so a retry that takes the key over after its process died answers
those items with their posts instead of scheduling them again

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 22:10:00.000000
"""

import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('idempotency_keys', sa.Column('made', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('idempotency_keys') as batch:
        batch.drop_column('made')

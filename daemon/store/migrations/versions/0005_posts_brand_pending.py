"""posts: indexes for a brand's pending posts by due time (the API's guardrail histories) and
for pending posts in schedule order (GET /posts/scheduled)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 08:40:00.000000
"""

from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_posts_brand_state_due', 'posts', ['brand_id', 'state', 'due_at'])
    op.create_index('ix_posts_scheduled', 'posts', ['scheduled_at', 'id', 'state', 'brand_id'])


def downgrade() -> None:
    op.drop_index('ix_posts_scheduled', table_name='posts')
    op.drop_index('ix_posts_brand_state_due', table_name='posts')

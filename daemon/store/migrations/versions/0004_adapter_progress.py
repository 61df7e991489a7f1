"""adapter progress: per-post state of two-phase publishes (Instagram containers)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 04:05:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('adapter_progress',
    sa.Column('post_id', sa.String(length=24), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['post_id'], ['posts.id'], ),
    sa.PrimaryKeyConstraint('post_id', 'key')
    )


def downgrade() -> None:
    op.drop_table('adapter_progress')

"""The admission report: what an expert's token did at the routing position when it was added.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain nullable column (ALTER TABLE, no table copy): rows from before it, or added with --no-report, have none
    op.add_column("experts", sa.Column("admission", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("experts", "admission")

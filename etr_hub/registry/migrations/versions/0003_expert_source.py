"""Bundles from the Hugging Face Hub: where an expert came from (`hf:ORG/REPO@COMMIT`).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain nullable column (ALTER TABLE, no table copy): rows from before it came from a folder
    op.add_column("experts", sa.Column("source", sa.String(512), nullable=True))


def downgrade() -> None:
    op.drop_column("experts", "source")

"""Bundle hardening: the environment variables an operator lets an expert read, and the meta
model's largest output-row norm (expert rows far beyond it are refused).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ALTER TABLE (nullable columns): no table copy, so SQLite's foreign keys stay intact
    op.add_column("experts", sa.Column("allowed_env", sa.JSON, nullable=True))
    op.add_column("meta_models", sa.Column("max_row_norm", sa.Float, nullable=True))


def downgrade() -> None:  # SQLite >= 3.35 drops a plain column in place
    op.drop_column("meta_models", "max_row_norm")
    op.drop_column("experts", "allowed_env")

"""Operator calibration: a bias per expert at the routing position and a minimum switch probability
per meta model. Kept in the registry, never in a bundle (a provider's token hash stays valid).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # server defaults: rows from before it route exactly as they did (bias 0, no minimum)
    op.add_column("experts", sa.Column("bias", sa.Float(), nullable=False, server_default="0"))
    op.add_column("meta_models", sa.Column("min_p", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("meta_models", "min_p")
    op.drop_column("experts", "bias")

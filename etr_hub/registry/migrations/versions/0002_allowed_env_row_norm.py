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
    with op.batch_alter_table("experts") as batch:
        batch.add_column(sa.Column("allowed_env", sa.JSON, nullable=True))
    with op.batch_alter_table("meta_models") as batch:
        batch.add_column(sa.Column("max_row_norm", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("meta_models") as batch:
        batch.drop_column("max_row_norm")
    with op.batch_alter_table("experts") as batch:
        batch.drop_column("allowed_env")

"""Initial registry: meta models, query sets, experts.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meta_models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True, index=True),
        sa.Column("reference", sa.JSON, nullable=False),
        sa.Column("display", sa.String(512), nullable=False),
        sa.Column("hidden_size", sa.Integer, nullable=False),
        sa.Column("vocab_size", sa.Integer, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "query_sets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, index=True),
        sa.Column("meta_fingerprint", sa.String(64), sa.ForeignKey("meta_models.fingerprint"), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("store_path", sa.String(512), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("tau", sa.Float, nullable=True),
        sa.Column("label", sa.String(128), nullable=True),
        sa.Column("expert_ref", sa.JSON, nullable=False),
        sa.Column("provenance", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("name", "sha256", "meta_fingerprint"),
    )
    op.create_table(
        "experts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, index=True),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("label", sa.String(128), nullable=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("meta_fingerprint", sa.String(64), sa.ForeignKey("meta_models.fingerprint"), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("token_path", sa.String(512), nullable=False),
        sa.Column("adapter_sha256", sa.String(64), nullable=True),
        sa.Column("adapter_path", sa.String(512), nullable=True),
        sa.Column("model_card_path", sa.String(512), nullable=True),
        sa.Column("query_set_id", sa.Integer, sa.ForeignKey("query_sets.id"), nullable=True),
        sa.Column("tau", sa.Float, nullable=True),
        sa.Column("expert_ref", sa.JSON, nullable=False),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("name", "version"),
    )


def downgrade() -> None:
    op.drop_table("experts")
    op.drop_table("query_sets")
    op.drop_table("meta_models")

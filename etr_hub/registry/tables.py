"""Registry tables. The database holds paths (relative to the store) and hashes, never tensors."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel


def _now() -> datetime:
    return datetime.now(UTC)


class MetaModel(SQLModel, table=True):
    __tablename__ = "meta_models"

    id: int | None = Field(default=None, primary_key=True)
    fingerprint: str = Field(unique=True, index=True, max_length=64)
    reference: dict = Field(sa_column=Column(JSON, nullable=False))  # a ModelRef
    display: str = Field(max_length=512)
    hidden_size: int
    vocab_size: int
    max_row_norm: float | None = None  # largest L2 norm of a W_V row: expert rows far beyond it are refused
    active: bool = Field(default=False)  # the meta model experts are checked against
    min_p: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})  # an expert needs p ≥ this to route
    created_at: datetime = Field(default_factory=_now)


class QuerySet(SQLModel, table=True):
    __tablename__ = "query_sets"
    __table_args__ = (UniqueConstraint("name", "sha256", "meta_fingerprint"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=64)  # the expert it was built for
    meta_fingerprint: str = Field(foreign_key="meta_models.fingerprint", max_length=64)
    sha256: str = Field(max_length=64)
    store_path: str = Field(max_length=512)
    size: int
    tau: float | None = None
    label: str | None = Field(default=None, max_length=128)
    expert_ref: dict = Field(sa_column=Column(JSON, nullable=False))
    provenance: dict = Field(sa_column=Column(JSON, nullable=False))  # QuerySetInfo as JSON
    created_at: datetime = Field(default_factory=_now)


class Expert(SQLModel, table=True):
    __tablename__ = "experts"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=64)
    version: str = Field(max_length=32)
    enabled: bool = Field(default=True)
    label: str | None = Field(default=None, max_length=128)
    description: str = ""
    meta_fingerprint: str = Field(foreign_key="meta_models.fingerprint", max_length=64)
    token_sha256: str = Field(max_length=64)
    token_path: str = Field(max_length=512)
    adapter_sha256: str | None = Field(default=None, max_length=64)
    adapter_path: str | None = Field(default=None, max_length=512)
    model_card_path: str | None = Field(default=None, max_length=512)
    query_set_id: int | None = Field(default=None, foreign_key="query_sets.id")
    tau: float | None = None
    expert_ref: dict = Field(sa_column=Column(JSON, nullable=False))
    manifest: dict = Field(sa_column=Column(JSON, nullable=False))
    allowed_env: list | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )  # env variables the operator let it read (--allow-env)
    source: str | None = Field(default=None, max_length=512)  # where it came from: hf:ORG/REPO@COMMIT (None: a folder)
    bias: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})  # the operator's, added to its logit
    admission: dict | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )  # the admission report at `expert add` (None: added without one)
    created_at: datetime = Field(default_factory=_now)

"""`expert.json`: the bundle manifest, as a strict pydantic model (unknown fields rejected)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from etr_hub import __version__
from etr_hub.models.refs import ModelRef

SCHEMA_VERSION: Literal[1] = 1
MANIFEST_NAME = "expert.json"
TOKEN_TENSOR = "expert_token"  # the one tensor inside token.safetensors

# Limits hold whatever the database: strings fit the registry's columns (label: 128), numbers
# are finite, counts fit a 32-bit integer column (PostgreSQL refuses what SQLite would store).
INT32_MAX = 2**31 - 1
Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
RelPath = Annotated[
    str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
]  # no NUL or control characters
Label = Annotated[str, Field(max_length=128)]
Text = Annotated[str, Field(max_length=4096)]
Short = Annotated[str, Field(max_length=512)]
PositiveInt = Annotated[int, Field(ge=1, le=INT32_MAX)]
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MetaInfo(Strict):
    """The meta model the token was trained against; a token only fits that model."""

    reference: Short
    hidden_size: PositiveInt
    vocab_size: PositiveInt
    fingerprint: Sha256  # sha256 of the meta model's output-embedding matrix (float32)


class TokenInfo(Strict):
    file: RelPath = "token.safetensors"
    sha256: Sha256
    shape: tuple[PositiveInt, PositiveInt]
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


class DatasetInfo(Strict):
    name: Short
    sha256: Sha256
    n_pairs: PositiveInt


class LossGapStats(Strict):
    """loss_meta - loss_expert (summed response NLL, nats) over the whole dataset."""

    n: PositiveInt
    mean: float
    min: float
    max: float
    quantiles: Annotated[dict[Annotated[str, Field(max_length=32)], float], Field(max_length=64)] = {}


class QuerySetInfo(Strict):
    file: RelPath = "query_set.jsonl"
    sha256: Sha256
    size: PositiveInt
    tau: float | None = None
    selection_rule: Short = "loss_meta - loss_expert > tau"
    seed: Seed = 0
    source: DatasetInfo | None = None
    loss_gap: LossGapStats | None = None
    label: Label | None = None
    purity: float | None = None


class TrainingInfo(Strict):
    objective: Short = "-log P(expert token | query)"
    init: Short = "mean of output-embedding rows"
    optimizer: Short = "AdamW"
    lr: float
    weight_decay: float
    epochs: Count
    batch_size: PositiveInt
    schedule: Short = "cosine, 5 warm-up steps"
    steps: Count
    final_loss: float
    stopped: Short = "epochs"
    negatives: Annotated[
        list[Short], Field(max_length=10_000)
    ] = []  # experts whose query sets were negatives (their tokens frozen in the softmax)
    word_negatives: Count = 0  # general prompts labelled "a word token" (teach the token not to fire on small talk)


class Sampling(Strict):
    """How the expert's answers are meant to be decoded when the caller sets nothing itself (a skill
    expert declares greedy: its accuracy was measured so). Unset fields: the meta model's recommendation."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None

    def declared(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Manifest(Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: Slug
    version: Annotated[str, Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}$")] = "0.1.0"
    description: Text = ""
    license: Short
    provider: Short
    label: Label | None = None  # the domain this expert answers for, e.g. an MMLU subject
    expert: ModelRef
    meta: MetaInfo
    token: TokenInfo
    query_set: QuerySetInfo | None = None
    training: TrainingInfo | None = None
    sampling: Sampling | None = None
    model_card: RelPath | None = None
    etr_hub_version: Annotated[str, Field(max_length=64)] = __version__
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def first_error(exc: ValidationError) -> tuple[str, str]:
    """(problem, fix) for the first pydantic error, in one line."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown field '{where}'", "remove it; the manifest schema has no such field"
    if kind == "missing":
        return f"missing field '{where}'", "add it to expert.json"
    return f"field '{where}': {err['msg']}", "correct the value in expert.json"

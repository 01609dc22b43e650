"""`train-token`: learn an expert's token on its query set and write + register a bundle."""

from __future__ import annotations

import getpass
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import torch

from etr_hub.bundle import Bundle, Manifest
from etr_hub.bundle.io import write_token_bundle
from etr_hub.bundle.manifest import MetaInfo, QuerySetInfo, TrainingInfo
from etr_hub.errors import DataError, EtrHubError
from etr_hub.jsonl import query_column
from etr_hub.models.refs import ModelRef
from etr_hub.registry import Registry
from etr_hub.registry.tables import Expert, MetaModel, QuerySet
from etr_hub.routing import WORD
from etr_hub.session import (
    ModelSession,
    ProgressFactory,
    Status,
    expert_row,
    no_progress,
    query_set_queries,
    read_general_prompts,
)
from etr_hub.training.optimize import TrainOutcome, TrainSettings, cached_features, train_rows

PAPER = TrainSettings()  # the paper's optimiser settings


@dataclass(frozen=True)
class BundleInfo:
    """The bundle `train-token` writes: where, and what its manifest says besides the training."""

    out: Path | None = None  # default: $ETR_HUB_HOME/bundles/NAME-VERSION
    version: str | None = None  # default: the next patch version of NAME
    description: str = ""  # default: "NAME expert"
    license: str = "unknown"
    provider: str | None = None  # default: the user's login name
    replace: bool = False  # overwrite `out`, and a registered expert of the same name and version


@dataclass
class TrainingSet:
    """The queries the new row learns from, each with the pooled index it should route to."""

    queries: list[str]
    target: torch.Tensor  # (Q,) 1 + len(negatives): the new token; 1 + k: registered expert k; WORD
    w_frozen: torch.Tensor  # (N, C) the registered experts' rows, frozen in the softmax
    negatives: list[str]  # the registered experts whose query sets are negatives
    n_word: int  # everyday prompts among the queries (a word token should win there)


@dataclass
class TrainResult:
    bundle: Bundle
    expert: Expert
    outcome: TrainOutcome
    n_queries: int
    n_negatives: int
    train_routing_accuracy: float
    seconds: float


def train_token(
    registry: Registry,
    name: str,
    *,
    query_set: str | None = None,
    cfg: TrainSettings = PAPER,
    bundle: BundleInfo = BundleInfo(),
    word_negatives: bool = True,
    negatives: Path | None = None,
    progress: ProgressFactory = no_progress,
    status: Status = None,
    session: ModelSession | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> TrainResult:
    """Train `name`'s token on its query set (default: the one named `name`) with the registered
    experts frozen, write the bundle and register it. Pass a `session` to reuse loaded models, or
    `device` / `dtype` for where a new one runs the meta model's pass (models/device.py); the row
    itself is optimised in float32 on the CPU over the cached states (training/optimize.py: one
    thread beats many for its thousands of tiny steps), so it is the same on any device. `negatives`: a JSONL
    file of prompts ('query') the token must leave to the meta model, e.g. requests for skills no registered
    expert has; trained as the everyday prompts are."""
    t0 = time.perf_counter()
    bundle = _with_defaults(registry, name, bundle)
    _check_before_training(registry, name, cfg, bundle)
    extra = _read_negatives(negatives) if negatives is not None else []
    session = session or ModelSession(registry, status, device=device, dtype=dtype)
    qs = _query_set(registry, query_set or name, session.meta_row.fingerprint)
    adapter = _adapter_source(registry, qs)  # before training: a missing adapter fails now, not after it
    data = _training_set(registry, name, qs, session.meta_row, word_negatives, extra)
    hidden, lse, _ = session.routing_states(data.queries, progress)
    features = cached_features(hidden, lse)
    outcome = train_rows(features, len(data.queries), data.target, data.w_frozen, session.mean_row(), cfg)
    _check_trained(outcome, hidden, cfg)
    info = _training_info(outcome, cfg, data)
    written = _write(registry, name, qs, adapter, session.meta_row, info, outcome.row, bundle)
    expert = registry.add_expert(written, replace=bundle.replace)
    return TrainResult(
        bundle=written,
        expert=expert,
        outcome=outcome,
        n_queries=qs.size,
        n_negatives=len(data.queries) - qs.size,
        train_routing_accuracy=_routing_accuracy(hidden, lse, data, outcome.row),
        seconds=time.perf_counter() - t0,
    )


def _with_defaults(registry: Registry, name: str, bundle: BundleInfo) -> BundleInfo:
    version = bundle.version or _next_version(registry, name)
    out = Path(bundle.out) if bundle.out else registry.settings.bundles_dir / f"{name}-{version}"
    return replace(bundle, version=version, out=out)


def _next_version(registry: Registry, name: str) -> str:
    versions = [e.version for e in registry.list_experts() if e.name == name]
    if not versions:
        return "0.1.0"

    def key(v: str):
        return tuple(int(p) if p.isdigit() else 0 for p in v.split("."))

    major, minor, patch = [*key(max(versions, key=key)), 0, 0, 0][:3]
    return f"{major}.{minor}.{patch + 1}"


def _query_set(registry: Registry, name: str, meta_fingerprint: str) -> QuerySet:
    qs = registry.latest_query_set(name, meta_fingerprint)
    if qs is None:
        raise EtrHubError(
            f"no query set named '{name}' for the registry's meta model",
            f"build one first: `etr-hub query-set build {name} --expert REF --data FILE.jsonl`",
        )
    return qs


def _read_negatives(path: Path) -> list[str]:
    """--negatives: the 'query' of every line (a line without one is a DataError naming it)."""
    if not Path(path).is_file():
        raise DataError(f"--negatives {path} does not exist", 'pass a JSONL file with one {"query": …} per line')
    prompts = query_column(path, f"--negatives {path}")
    if not prompts:
        raise DataError(f"--negatives {path} holds no prompts", 'write one {"query": …} object per line')
    return prompts


def _training_set(
    registry: Registry, name: str, qs: QuerySet, meta: MetaModel, word_negatives: bool, extra: list[str]
) -> TrainingSet:
    """The expert's queries, the registered experts' query sets as negatives labelled with their
    own (frozen) tokens, and with `word_negatives` the everyday prompts and `extra`, where a word should win."""
    others = [
        e for e in registry.list_experts(enabled_only=True) if e.name != name and e.meta_fingerprint == meta.fingerprint
    ]
    w_frozen = (
        torch.cat([expert_row(registry, e) for e in others], dim=0) if others else torch.zeros(0, meta.hidden_size)
    )
    queries = query_set_queries(registry, qs)
    targets = [1 + len(others)] * len(queries)  # the new token's pooled index
    for k, e in enumerate(others):
        other_qs = registry.query_set_for(e)
        if other_qs is not None:
            negatives = query_set_queries(registry, other_qs)
            queries += negatives
            targets += [1 + k] * len(negatives)
    general = (read_general_prompts(split="train") if word_negatives else []) + extra
    queries += general
    targets += [WORD] * len(general)
    return TrainingSet(queries, torch.tensor(targets), w_frozen, [e.name for e in others], len(general))


def _routing_accuracy(hidden: torch.Tensor, lse: torch.Tensor, data: TrainingSet, row: torch.Tensor) -> float:
    """The share of the training queries whose own token (or a word) wins with the new row in place."""
    from etr_hub.routing import pooled_routing_logits

    winners = pooled_routing_logits(hidden, lse, torch.cat([data.w_frozen, row], dim=0)).argmax(dim=-1)  # (Q,)
    return float((winners == data.target).float().mean())


def _check_before_training(registry: Registry, name: str, cfg: TrainSettings, bundle: BundleInfo) -> None:
    """Everything that would otherwise fail only after training: cheap, before any model loads."""
    from pydantic import TypeAdapter, ValidationError

    for field, value in (("name", name), ("version", bundle.version)):
        info = Manifest.model_fields[field]
        try:
            TypeAdapter(Annotated[info.annotation, *info.metadata]).validate_python(value)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise EtrHubError(
                f"{value!r} is not a valid expert {field} ({exc.errors()[0]['msg']})", f"pass another {field}"
            ) from None
    for param, number, ok in (("lr", cfg.lr, cfg.lr > 0), ("weight_decay", cfg.weight_decay, cfg.weight_decay >= 0)):
        if not (math.isfinite(number) and ok):
            raise EtrHubError(
                f"`{param}` must be a finite number {'> 0' if param == 'lr' else '≥ 0'} (got {number})",
                "pass e.g. `lr=5e-4`, `weight_decay=1.0`",
            )
    if cfg.batch_size < 1 or cfg.max_epochs < 1 or (cfg.epochs is not None and cfg.epochs < 1):
        raise EtrHubError("`batch_size`, `max_epochs` and `epochs` must be at least 1", "pass e.g. `batch_size=16`")
    assert bundle.out is not None  # _with_defaults
    if bundle.out.exists() and not bundle.replace:
        raise EtrHubError(f"{bundle.out} already exists", "pass `replace=True` or choose another `out`")
    if not bundle.replace and any(e.name == name and e.version == bundle.version for e in registry.list_experts()):
        raise EtrHubError(
            f"expert '{name}' version {bundle.version} is already registered",
            "pass `replace=True` to overwrite it, or another `version`",
        )


# A logit this large gives its query p = 1.0 whatever the meta model says: training ran away.
MAX_TOKEN_LOGIT = 1e4


def _check_trained(outcome: TrainOutcome, hidden: torch.Tensor, cfg: TrainSettings) -> None:
    """Refuse a diverged row before anything is written (a bundle refusing it later would blame the manifest)."""
    row = outcome.row.float()
    largest = float((hidden.float() @ row.T).abs().max()) if hidden.numel() else 0.0  # (Q, C) @ (C, 1)
    if not (math.isfinite(outcome.final_loss) and bool(torch.isfinite(row).all()) and largest <= MAX_TOKEN_LOGIT):
        raise EtrHubError(
            f"training diverged at `lr={cfg.lr:g}` (final loss {outcome.final_loss:g}, "
            f"largest token logit {largest:.3g}); nothing was written",
            "lower `lr` (the paper's is 5e-4)",
        )


def _training_info(outcome: TrainOutcome, cfg: TrainSettings, data: TrainingSet) -> TrainingInfo:
    return TrainingInfo(
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        epochs=outcome.epochs,
        batch_size=cfg.batch_size,
        schedule=f"cosine over {cfg.epochs or cfg.max_epochs} epochs, {cfg.warmup_steps} warm-up steps",
        steps=outcome.steps,
        final_loss=round(outcome.final_loss, 6),
        stopped=outcome.stopped,
        negatives=data.negatives,
        word_negatives=data.n_word,
    )


def _adapter_source(registry: Registry, qs: QuerySet) -> Path | None:
    """The adapter the new bundle ships (None for a full model): the absolute path `query-set build` recorded, or,
    for a query set that came in a bundle (its adapter named relative to the bundle), the registry's stored copy."""
    ref = ModelRef.model_validate(qs.expert_ref)
    if ref.kind != "peft" or not ref.path:
        return None
    path = ref.path
    stored = [e.adapter_path for e in registry.list_experts() if e.query_set_id == qs.id and e.adapter_path]
    source = Path(path) if Path(path).is_absolute() or not stored else registry.abspath(stored[0])
    if not source.is_dir():
        raise EtrHubError(
            f"the adapter of query set '{qs.name}' ({path}) is not there any more",
            f"rebuild the query set: `etr-hub query-set build {qs.name} --expert ADAPTER_DIR --data FILE.jsonl`",
        )
    return source


def _write(
    registry: Registry,
    name: str,
    qs: QuerySet,
    adapter: Path | None,
    meta: MetaModel,
    training: TrainingInfo,
    row: torch.Tensor,
    bundle: BundleInfo,
) -> Bundle:
    ref = ModelRef.model_validate(qs.expert_ref)
    files: dict[str, Path] = {"query_set.jsonl": registry.abspath(qs.store_path)}
    if adapter is not None:
        files["adapter"] = adapter
        ref = ref.model_copy(update={"path": "adapter"})  # the bundle carries the adapter
    assert bundle.out is not None and bundle.version is not None  # _with_defaults
    return write_token_bundle(
        bundle.out,
        row,
        files=files,
        replace=bundle.replace,
        name=name,
        version=bundle.version,
        description=bundle.description or f"{name} expert",
        license=bundle.license,
        provider=bundle.provider or getpass.getuser(),
        label=qs.label,
        expert=ref,
        meta=MetaInfo(
            reference=meta.display,
            hidden_size=meta.hidden_size,
            vocab_size=meta.vocab_size,
            fingerprint=meta.fingerprint,
        ),
        query_set=QuerySetInfo.model_validate(qs.provenance),
        training=training,
    )

"""`train-token`: learn an expert's token on its query set and write + register a bundle."""

from __future__ import annotations

import getpass
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch

from etr_hub.bundle import Bundle, Manifest, write_bundle
from etr_hub.bundle.io import save_token
from etr_hub.bundle.manifest import MetaInfo, QuerySetInfo, TokenInfo, TrainingInfo
from etr_hub.cache import StateCache, query_key
from etr_hub.errors import EtrHubError
from etr_hub.models.refs import ModelRef
from etr_hub.queryset.build import ModelSession, ProgressFactory, no_progress
from etr_hub.registry import Registry
from etr_hub.registry.tables import Expert, QuerySet
from etr_hub.routing import WORD
from etr_hub.store import sha256_file
from etr_hub.training.optimize import TrainOutcome, TrainSettings, cached_features, train_expert_row


@dataclass
class TrainResult:
    bundle: Bundle
    expert: Expert
    outcome: TrainOutcome
    n_queries: int
    n_negatives: int
    train_routing_accuracy: float
    seconds: float


def _queries(registry: Registry, qs: QuerySet) -> list[str]:
    from etr_hub.jsonl import query_column

    return query_column(registry.abspath(qs.store_path))


def general_prompts(split: str) -> list[str]:
    """The project's own everyday prompts (etr_hub/data/general_prompts.jsonl) of one split."""
    from importlib.resources import files

    lines = files("etr_hub").joinpath("data/general_prompts.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [r["query"] for r in rows if r["split"] == split]


def _row(registry: Registry, expert: Expert) -> torch.Tensor:
    from etr_hub.bundle.io import read_token

    m = Manifest.model_validate(expert.manifest)
    return read_token(registry.abspath(expert.token_path).parent, registry.abspath(expert.token_path), m).float()


def routing_states_for(session: ModelSession, queries: list[str], progress: ProgressFactory, batch_size: int = 16):
    """Cached (hidden, lse) for every query; one meta pass over the ones not cached yet."""
    from etr_hub.models.fingerprint import output_embedding
    from etr_hub.queryset.scoring import routing_states

    cache = StateCache(session.registry.settings.cache_dir, session.meta_row.fingerprint)
    keys = [query_key(q) for q in queries]
    hidden, lse, missing = cache.get(keys)
    if missing:
        meta = session.meta
        h_new, lse_new = routing_states(
            meta.model,
            meta.tokenizer,
            [queries[i] for i in missing],
            batch_size=batch_size,
            advance=progress("meta model pass (routing states)", len(missing)),
        )
        cache.put([keys[i] for i in missing], h_new, lse_new)
        cache.put_mean_row(output_embedding(meta.model))
        if hidden is None:
            hidden, lse = h_new, lse_new
        else:
            hidden[missing], lse[missing] = h_new, lse_new
    init = cache.get_mean_row()
    if init is None:
        cache.put_mean_row(output_embedding(session.meta.model))
        init = cache.get_mean_row()
    return hidden, lse, init


def _next_version(registry: Registry, name: str) -> str:
    versions = [e.version for e in registry.list_experts() if e.name == name]
    if not versions:
        return "0.1.0"

    def key(v: str):
        return tuple(int(p) if p.isdigit() else 0 for p in v.split("."))

    major, minor, patch = (list(key(max(versions, key=key))) + [0, 0, 0])[:3]
    return f"{major}.{minor}.{patch + 1}"


def train_token(
    registry: Registry,
    name: str,
    *,
    query_set: str | None = None,
    cfg: TrainSettings = TrainSettings(),
    out: Path | None = None,
    version: str | None = None,
    description: str = "",
    license: str = "unknown",
    provider: str | None = None,
    replace: bool = False,
    word_negatives: bool = True,
    progress: ProgressFactory = no_progress,
    status: Callable[[str], None] | None = None,
    session: ModelSession | None = None,
) -> TrainResult:
    t0 = time.perf_counter()
    version = version or _next_version(registry, name)
    out = Path(out) if out else registry.settings.bundles_dir / f"{name}-{version}"
    _check_before_training(registry, name, version, cfg, out, replace)
    session = session or ModelSession(registry, status)
    meta = session.meta_row
    qs = registry.latest_query_set(query_set or name, meta.fingerprint)
    if qs is None:
        raise EtrHubError(
            f"no query set named '{query_set or name}' for the registry's meta model",
            f"build one first: etr-hub query-set build {query_set or name} --expert REF --data FILE.jsonl",
        )

    # the already registered experts: frozen rows in the softmax, their query sets as negatives
    others = [
        e for e in registry.list_experts(enabled_only=True) if e.name != name and e.meta_fingerprint == meta.fingerprint
    ]
    w_frozen = (
        torch.cat([_row(registry, e) for e in others], dim=0) if others else torch.zeros(0, meta.hidden_size)
    )  # (N, C)
    queries = _queries(registry, qs)
    targets = [1 + len(others)] * len(queries)  # the new token's pooled index
    for k, e in enumerate(others):
        other_qs = registry.query_set_for(e)
        if other_qs is not None:
            neg = _queries(registry, other_qs)
            queries += neg
            targets += [1 + k] * len(neg)
    n_word = 0
    if word_negatives:  # everyday prompts where a word token, not any expert, should win
        general = general_prompts("train")
        queries += general
        targets += [WORD] * len(general)
        n_word = len(general)
    target = torch.tensor(targets)
    hidden, lse, init = routing_states_for(session, queries, progress)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny steps: extra threads only add sync cost (170x slower on a busy CPU)
    try:
        outcome = train_expert_row(cached_features(hidden, lse), len(queries), target, w_frozen, init, cfg)
    finally:
        torch.set_num_threads(threads)
    _check_trained(outcome, hidden, cfg)

    from etr_hub.routing import pooled_routing_logits

    winners = pooled_routing_logits(hidden, lse, torch.cat([w_frozen, outcome.row], dim=0)).argmax(dim=-1)  # (Q,)
    accuracy = float((winners == target).float().mean())
    bundle = _write(
        registry,
        name,
        qs,
        meta,
        outcome,
        cfg,
        [e.name for e in others],
        n_word,
        out,
        version,
        description,
        license,
        provider or getpass.getuser(),
        replace,
    )
    expert = registry.add_expert(bundle, replace=replace)
    return TrainResult(
        bundle=bundle,
        expert=expert,
        outcome=outcome,
        n_queries=qs.size,
        n_negatives=len(queries) - qs.size,
        train_routing_accuracy=accuracy,
        seconds=time.perf_counter() - t0,
    )


def _check_before_training(
    registry: Registry, name: str, version: str, cfg: TrainSettings, out: Path, replace: bool
) -> None:
    """Everything that would otherwise fail only after training: cheap, before any model loads."""
    from pydantic import TypeAdapter, ValidationError

    for field, value in (("name", name), ("version", version)):
        info = Manifest.model_fields[field]
        try:
            TypeAdapter(Annotated[info.annotation, *info.metadata]).validate_python(value)
        except ValidationError as exc:
            raise EtrHubError(
                f"{value!r} is not a valid expert {field} ({exc.errors()[0]['msg']})", f"pass another {field}"
            ) from None
    for flag, value, ok in (("lr", cfg.lr, cfg.lr > 0), ("weight_decay", cfg.weight_decay, cfg.weight_decay >= 0)):
        if not (math.isfinite(value) and ok):
            raise EtrHubError(
                f"{flag} must be a finite number {'> 0' if flag == 'lr' else '≥ 0'} (got {value})",
                "pass e.g. --lr 5e-4 --weight-decay 1.0",
            )
    if cfg.batch_size < 1 or cfg.max_epochs < 1 or (cfg.epochs is not None and cfg.epochs < 1):
        raise EtrHubError("batch_size, max_epochs and epochs must be at least 1", "pass e.g. --batch-size 16")
    if out.exists() and not replace:
        raise EtrHubError(f"{out} already exists", "pass --replace or choose another --out")
    if not replace and any(e.name == name and e.version == version for e in registry.list_experts()):
        raise EtrHubError(
            f"expert '{name}' version {version} is already registered",
            "pass --replace to overwrite it, or another --version",
        )


# A logit this large gives its query p = 1.0 whatever the meta model says: training ran away.
MAX_TOKEN_LOGIT = 1e4


def _check_trained(outcome: TrainOutcome, hidden: torch.Tensor, cfg: TrainSettings) -> None:
    """Refuse a diverged row before anything is written (a bundle refusing it later would blame expert.json)."""
    row = outcome.row.float()
    largest = float((hidden.float() @ row.T).abs().max()) if hidden.numel() else 0.0  # (Q, C) @ (C, 1)
    if not (math.isfinite(outcome.final_loss) and bool(torch.isfinite(row).all()) and largest <= MAX_TOKEN_LOGIT):
        raise EtrHubError(
            f"training diverged at --lr {cfg.lr:g} (final loss {outcome.final_loss:g}, largest token logit {largest:.3g}); nothing was written",
            "lower --lr (the paper's is 5e-4)",
        )


def _write(
    registry,
    name,
    qs: QuerySet,
    meta,
    outcome: TrainOutcome,
    cfg: TrainSettings,
    negatives,
    n_word,
    out,
    version,
    description,
    license,
    provider,
    replace,
) -> Bundle:
    ref = ModelRef.model_validate(qs.expert_ref)
    files: dict[str, Path] = {"query_set.jsonl": registry.abspath(qs.store_path)}
    if ref.kind == "peft" and ref.path:
        files["adapter"] = Path(ref.path)
        ref = ref.model_copy(update={"path": "adapter"})  # the bundle carries the adapter
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token.safetensors"
        save_token(token_file, outcome.row)
        files["token.safetensors"] = token_file
        manifest = Manifest(
            name=name,
            version=version,
            description=description or f"{name} expert",
            license=license,
            provider=provider,
            label=qs.label,
            expert=ref,
            meta=MetaInfo(
                reference=meta.display,
                hidden_size=meta.hidden_size,
                vocab_size=meta.vocab_size,
                fingerprint=meta.fingerprint,
            ),
            token=TokenInfo(sha256=sha256_file(token_file), shape=(1, meta.hidden_size), dtype="float32"),
            query_set=QuerySetInfo.model_validate(qs.provenance),
            training=TrainingInfo(
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                epochs=outcome.epochs,
                batch_size=cfg.batch_size,
                schedule=f"cosine over {cfg.epochs or cfg.max_epochs} epochs, {cfg.warmup_steps} warm-up steps",
                steps=outcome.steps,
                final_loss=round(outcome.final_loss, 6),
                stopped=outcome.stopped,
                negatives=negatives,
                word_negatives=n_word,
            ),
        )
        return write_bundle(out, manifest, files, replace=replace)

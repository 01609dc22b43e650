"""The registered experts an evaluation routes among, and which expert should answer what."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from etr_hub.cache import digest
from etr_hub.errors import EtrHubError
from etr_hub.eval.scoring import SCORE_FORMAT
from etr_hub.models.refs import ModelRef
from etr_hub.registry import Registry
from etr_hub.session import expert_row, query_set_queries

NO_EXPERTS = (
    "no experts are registered for this meta model: only the meta model is evaluated "
    "(register experts with `etr-hub expert add plugins/NAME`)"
)


@dataclass
class ExpertEntry:
    name: str
    label: str | None
    description: str
    ref: ModelRef  # loadable (store paths resolved)
    row: torch.Tensor  # (1, C) token
    score_key: str  # identity of its weights for the letter-score cache
    query_set: list[str] | None


def load_experts(registry: Registry, fingerprint: str, cache_id: str | None = None) -> list[ExpertEntry]:
    """The enabled experts of the meta model `fingerprint`; `cache_id` (session.cache_id, default
    the fingerprint) keys what they compute."""
    entries = []
    for e in sorted(registry.list_experts(enabled_only=True), key=lambda r: r.name):
        if e.meta_fingerprint != fingerprint:
            continue
        ref = ModelRef.model_validate(e.expert_ref)
        if ref.kind == "peft" and e.adapter_path:
            ref = ref.model_copy(update={"path": str(registry.abspath(e.adapter_path))})
        identity = e.adapter_sha256 or json.dumps(e.expert_ref, sort_keys=True)
        qs = registry.query_set_for(e)
        queries = query_set_queries(registry, qs) if qs is not None else None
        score_key = digest(SCORE_FORMAT, cache_id or fingerprint, identity)
        entries.append(
            ExpertEntry(e.name, e.label, e.description or "", ref, expert_row(registry, e), score_key, queries)
        )
    return entries


def experts_for(names: Iterable[str], experts: list[ExpertEntry], mapping: dict[str, str]) -> dict[str, str | None]:
    """Each subject or task -> the expert that should answer it: `mapping` first, else the expert
    whose manifest label is that name; None where neither names one."""
    registered = [e.name for e in experts]
    for what, name in mapping.items():
        if name not in registered:
            raise EtrHubError(
                f"`mapping` {what}={name}: no enabled expert named '{name}' for this meta model",
                f"registered: {', '.join(registered) or 'none'} (see `etr-hub expert list`)",
            )
    by_label = {e.label: e.name for e in experts if e.label}
    return {n: mapping.get(n) or by_label.get(n) for n in names}


def no_group_maps(where: object, experts: list[ExpertEntry], what: str, otherwise: str = "") -> EtrHubError:
    """No subject (or task) of the data has an expert: nothing to evaluate."""
    labels = ", ".join(sorted(e.label for e in experts if e.label)) or "none"
    return EtrHubError(
        f"no {what} in {where} maps to a registered expert (labels: {labels})",
        f"map each {what} to its expert with `mapping` ({what.upper()}=EXPERT){otherwise}",
    )

"""Build W_E from the registry: the enabled experts that fit the loaded meta model.

An expert joins when its manifest names this meta model's fingerprint and hidden size, its
token file in the store still has the sha256 the registry recorded, its row is within
MAX_ROW_NORM_RATIO of W_V's largest row (rows already in a registry were never checked at add),
and an installed backend can serve its expert reference. Everything else is skipped with a
reason; nothing is modified. Changes to the registry (enable, disable, add) take effect at the
next assembly, i.e. the next Hub.open().
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from etr_hub.backends import ExpertSpec, backend_kind, installed_backends
from etr_hub.bundle.io import NORM_FIX, read_token, token_norm_problem
from etr_hub.bundle.manifest import Manifest
from etr_hub.errors import BundleError
from etr_hub.models.refs import BUILTIN_KINDS, ModelRef
from etr_hub.plugins import plugin_backend_kinds
from etr_hub.registry import Registry
from etr_hub.registry.tables import Expert
from etr_hub.routing.math import assemble_expert_matrix
from etr_hub.runtime.types import ExpertInfo
from etr_hub.store import sha256_file


@dataclass
class Assembly:
    w_e: torch.Tensor  # (N, C) float32, row k = experts[k]'s token
    bias: torch.Tensor  # (N,) float32, the operator's calibration bias on expert k's logit (registry, not bundle)
    experts: list[ExpertInfo] = field(default_factory=list)
    specs: dict[str, ExpertSpec] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


def assemble(registry: Registry, *, fingerprint: str, hidden_size: int, max_row_norm: float | None = None) -> Assembly:
    """`max_row_norm`: the loaded meta model's largest W_V row norm (None: the registry's record)."""
    if max_row_norm is None:
        meta = registry.active_meta()
        max_row_norm = meta.max_row_norm if meta is not None and meta.fingerprint == fingerprint else None
    rows, biases, experts, specs, skipped = [], [], [], {}, []
    for expert in registry.list_experts(enabled_only=True):
        try:
            row, ref, manifest = _admit(registry, expert, fingerprint, hidden_size, max_row_norm)
        except _Skip as skip:
            skipped.append((expert.name, str(skip)))
            continue
        rows.append(row)
        biases.append(float(expert.bias))
        specs[expert.name] = ExpertSpec(expert.name, ref, frozenset(expert.allowed_env or ()))
        experts.append(
            ExpertInfo(
                expert.name,
                expert.version,
                backend_kind(ref) or "?",
                ref.display(),
                expert.label,
                expert.description,
                float(expert.bias),
                manifest.sampling.declared() if manifest.sampling else {},
            )
        )
    bias = torch.tensor(biases, dtype=torch.float32)  # (N,)
    return Assembly(assemble_expert_matrix(rows, hidden_size), bias, experts, specs, skipped)


class _Skip(Exception):
    pass


def _admit(
    registry: Registry, expert: Expert, fingerprint: str, hidden_size: int, max_row_norm: float | None
) -> tuple[torch.Tensor, ModelRef, Manifest]:
    if expert.meta_fingerprint != fingerprint:
        raise _Skip(
            f"trained against meta model {expert.meta_fingerprint[:12]}…, this one is {fingerprint[:12]}… "
            "— retrain its token with `etr-hub train-token`"
        )
    manifest = _manifest(expert)
    if manifest.meta.hidden_size != hidden_size or manifest.token.shape[1] != hidden_size:
        raise _Skip(
            f"token dimension {manifest.token.shape[1]} ≠ the meta model's hidden size {hidden_size} "
            "— retrain its token"
        )
    token_path = registry.abspath(expert.token_path)
    if not token_path.is_file():
        raise _Skip(
            f"token file {token_path} is missing from the store — re-add the bundle with `etr-hub expert add --replace`"
        )
    actual = sha256_file(token_path)
    if actual != expert.token_sha256:
        raise _Skip(
            f"token file sha256 {actual[:12]}… does not match the recorded {expert.token_sha256[:12]}… "
            "(modified) — re-add the bundle"
        )
    try:
        row = read_token(token_path.parent, token_path, manifest)  # (1, C)
    except BundleError as exc:
        raise _Skip(exc.problem.split(": ", 1)[-1]) from None
    problem = token_norm_problem(row, max_row_norm) if max_row_norm is not None else None
    if problem:
        raise _Skip(f"{problem} — {NORM_FIX}")
    ref = _resolve(registry, expert, manifest.expert)
    if backend_kind(ref) is None:
        raise _Skip(f"no backend serves {ref.kind} experts ({installed_backends()})")
    if ref.kind == "peft" and not (
        ref.path and (registry.abspath(expert.adapter_path or "") / "adapter_config.json").is_file()
    ):
        raise _Skip("its adapter folder is missing from the store — re-add the bundle")
    return row.float(), ref, manifest


def _manifest(expert: Expert) -> Manifest:
    try:
        return Manifest.model_validate(expert.manifest)
    except ValueError as exc:
        kind = (expert.manifest.get("expert") or {}).get("kind") if isinstance(expert.manifest, dict) else None
        if isinstance(kind, str) and kind not in (*BUILTIN_KINDS, *plugin_backend_kinds()):  # e.g. uninstalled
            raise _Skip(f"no backend serves {kind} experts — install the package that provides it") from None
        raise _Skip(
            f"its recorded manifest no longer validates ({exc.__class__.__name__}) — re-add the bundle"
        ) from None


def _resolve(registry: Registry, expert: Expert, ref: ModelRef) -> ModelRef:
    """Adapters live in the registry's store (the bundle may be gone)."""
    if ref.kind == "peft" and expert.adapter_path:
        return ref.model_copy(update={"path": str(registry.abspath(expert.adapter_path))})
    return ref

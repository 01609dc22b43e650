"""Selection of the expert query set from per-example loss gaps (eq. 3 of the paper)."""

from __future__ import annotations

import random

import torch

TAUS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def loss_gap(loss_meta: torch.Tensor, loss_expert: torch.Tensor) -> torch.Tensor:
    """loss_meta(j) - loss_expert(j): how much better the expert explains response j."""
    return loss_meta - loss_expert  # (N,)


def select_by_tau(gap: torch.Tensor, tau: float, size: int, seed: int, top: bool = False) -> list[int]:
    """Indices with gap > tau, down-sampled to `size` with `seed` (the paper) or, with `top`,
    the `size` largest gaps; original order kept."""
    passing = [i for i, g in enumerate(gap.tolist()) if g > tau]
    if len(passing) > size:
        if top:
            passing = sorted(sorted(passing, key=lambda i: -float(gap[i]))[:size])
        else:
            passing = sorted(random.Random(seed).sample(passing, size))
    return passing


def select_by_label(labels: list[str | None], label: str, size: int, seed: int) -> list[int]:
    """The labelled route: a provider who knows its domain picks the examples by label."""
    matching = [i for i, lab in enumerate(labels) if lab == label]
    if len(matching) > size:
        matching = sorted(random.Random(seed).sample(matching, size))
    return matching


def tau_table(gap: torch.Tensor, taus: tuple[float, ...] = TAUS) -> list[dict]:
    return [{"tau": t, "passing": int((gap > t).sum())} for t in taus]


def gap_stats(gap: torch.Tensor) -> dict:
    q = torch.quantile(gap.float(), torch.tensor(QUANTILES)).tolist()
    return {
        "n": int(gap.numel()),
        "mean": float(gap.mean()),
        "min": float(gap.min()),
        "max": float(gap.max()),
        "quantiles": {f"p{int(p * 100)}": round(v, 4) for p, v in zip(QUANTILES, q)},
    }


def suggest_tau(gap: torch.Tensor, size: int) -> float:
    """A τ that lets about `size` queries through (floored to one decimal)."""
    ranked = sorted(gap.tolist(), reverse=True)
    k = min(size, len(ranked)) - 1
    threshold = ranked[k] if ranked[k] > ranked[-1] else ranked[-1]
    return float(torch.floor(torch.tensor(threshold - 1e-6) * 10) / 10)


def purity(selected: list[int], labels: list[str | None], label: str) -> float | None:
    """Share of selected queries whose label matches the expert's domain."""
    if not selected or all(lab is None for lab in labels):
        return None
    return sum(labels[i] == label for i in selected) / len(selected)

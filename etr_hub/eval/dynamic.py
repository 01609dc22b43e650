"""Plug-and-play check: static (all expert tokens trained together) vs dynamic (some trained
first, the rest added later one at a time with train-token's procedure), on cached states.

Both retrain rows from the registered experts' query sets with train-token's optimiser; the
registry is never written.
"""

from __future__ import annotations

import torch

from etr_hub.routing import WORD
from etr_hub.training.optimize import TrainSettings, cached_features, train_rows


def train_rows_jointly(
    hidden: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, init: torch.Tensor, n_rows: int, cfg: TrainSettings
) -> torch.Tensor:
    """(E, C) all rows at once (the paper's static setting): minimise -log p(own token | query)."""
    no_frozen = torch.zeros(0, init.shape[-1])  # (0, C)
    return train_rows(cached_features(hidden, lse), hidden.shape[0], targets, no_frozen, init, cfg, k=n_rows).row


def add_later(
    hidden: torch.Tensor,
    lse: torch.Tensor,
    owner: torch.Tensor,
    w_first: torch.Tensor,
    later: list[int],
    init: torch.Tensor,
    cfg: TrainSettings,
) -> torch.Tensor:
    """Add the experts `later` one at a time as `train-token` does: earlier rows frozen in the
    softmax, earlier experts' queries as negatives labelled with their own tokens.

    `owner[i]` is the expert index (0..E-1) of query i, or -1 for an everyday prompt where a word
    token should win (train-token's word negatives); `w_first` holds the rows of the experts not
    in `later`, in index order. Returns all E rows in index order.
    """
    n_experts = w_first.shape[0] + len(later)
    first = [k for k in range(n_experts) if k not in later]
    rows: dict[int, torch.Tensor] = {k: w_first[j : j + 1] for j, k in enumerate(first)}
    for k in later:
        present = sorted(rows)
        frozen = torch.cat([rows[j] for j in present], dim=0)  # (P, C)
        use = [i for i in range(len(owner)) if int(owner[i]) in rows or int(owner[i]) in (k, -1)]
        pooled = {j: 1 + p for p, j in enumerate(present)} | {k: 1 + len(present), -1: WORD}
        target = torch.tensor([pooled[int(owner[i])] for i in use])
        idx = torch.tensor(use)
        rows[k] = train_rows(cached_features(hidden[idx], lse[idx]), len(use), target, frozen, init, cfg).row
    return torch.cat([rows[k] for k in range(n_experts)], dim=0)  # (E, C)


def static_and_dynamic(
    hidden: torch.Tensor,
    lse: torch.Tensor,
    owner: torch.Tensor,
    init: torch.Tensor,
    n_experts: int,
    later: list[int],
    cfg: TrainSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """((E, C) rows trained all together, (E, C) rows where the experts `later` joined last, one at
    a time); `owner` as in `add_later`."""
    target = torch.where(owner >= 0, owner + 1, torch.zeros_like(owner))  # pooled index: 0 is the words
    first = [k for k in range(n_experts) if k not in later]
    keep = torch.tensor([int(o) in first or int(o) == -1 for o in owner])
    remap = {k: j for j, k in enumerate(first)}
    first_target = torch.tensor([remap[int(o)] + 1 if int(o) >= 0 else 0 for o in owner[keep]])
    static = train_rows_jointly(hidden, lse, target, init, n_experts, cfg)
    w_first = train_rows_jointly(hidden[keep], lse[keep], first_target, init, len(first), cfg)
    return static, add_later(hidden, lse, owner, w_first, later, init, cfg)

"""Plug-and-play check: static (all expert tokens trained together) vs dynamic (some trained
first, the rest added later one at a time with train-token's procedure), on cached states.

Both retrain rows from the registered experts' query sets; the registry is never written.
"""

from __future__ import annotations

import math

import torch

from etr_hub.routing import WORD, expert_token_loss
from etr_hub.training.optimize import TrainSettings, cached_features, train_expert_row


def train_rows_jointly(
    hidden: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, init: torch.Tensor, n_rows: int, cfg: TrainSettings
) -> torch.Tensor:
    """All rows at once (the paper's static setting): minimise -log p(own token | query)."""
    w = torch.nn.Parameter(init.detach().float().repeat(n_rows, 1))  # (E, C)
    opt = torch.optim.AdamW([w], lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = hidden.shape[0]
    epochs = cfg.epochs or cfg.max_epochs
    total = epochs * math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    best, since_best = float("inf"), 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        epoch_loss = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = expert_token_loss(hidden[idx], lse[idx], w, targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            epoch_loss += loss.item() * len(idx)
        epoch_loss /= n
        if cfg.epochs is None:
            best, since_best = (epoch_loss, 0) if epoch_loss < best * (1 - 1e-3) else (best, since_best + 1)
            if since_best >= cfg.patience:
                break
    return w.detach().clone()


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
        outcome = train_expert_row(cached_features(hidden[idx], lse[idx]), len(use), target, frozen, init, cfg)
        rows[k] = outcome.row
    return torch.cat([rows[k] for k in range(n_experts)], dim=0)  # (E, C)

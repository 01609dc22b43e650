"""The optimisation loop for one expert-token row. Pure: tensors in, a row out.

Only the new row `e` is a parameter. The other experts' rows are frozen and stay in the
softmax, and their query sets are negatives labelled with their own tokens: that is what lets
experts join one by one without degrading routing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from etr_hub.routing import expert_token_loss

# batch indices -> (h (B, C), lse_V (B,)): cached tensors, or a live model pass in tests
Features = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrainSettings:
    lr: float = 5e-4  # the paper's AdamW settings
    weight_decay: float = 1.0
    batch_size: int = 16
    warmup_steps: int = 5
    max_epochs: int = 300  # cosine schedule length; training usually stops earlier on a plateau
    epochs: int | None = None  # fixed epoch count (no plateau stop) when set
    patience: int = 10  # epochs without 0.1% improvement of the epoch loss before stopping
    seed: int = 0


@dataclass
class TrainOutcome:
    row: torch.Tensor  # (1, C)
    epochs: int
    steps: int
    final_loss: float
    stopped: str
    history: list[float] = field(default_factory=list)


def train_expert_row(
    features: Features, n: int, targets: torch.Tensor, w_frozen: torch.Tensor, init: torch.Tensor, cfg: TrainSettings
) -> TrainOutcome:
    """Minimise -log p(target | query) over n queries; the new token is index 1 + len(w_frozen)."""
    e = torch.nn.Parameter(init.detach().clone().float())  # (1, C)
    opt = torch.optim.AdamW([e], lr=cfg.lr, weight_decay=cfg.weight_decay)
    epochs = cfg.epochs or cfg.max_epochs
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[float] = []
    best, since_best, stopped, step = float("inf"), 0, "epochs", 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        epoch_loss = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            h, lse = features(idx)  # (B, C), (B,)
            w_e = torch.cat([w_frozen, e], dim=0)  # (N + 1, C)
            loss = expert_token_loss(h, lse, w_e, targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            epoch_loss += loss.item() * len(idx)
        history.append(epoch_loss / n)
        if cfg.epochs is None:
            if history[-1] < best * (1 - 1e-3):
                best, since_best = history[-1], 0
            else:
                since_best += 1
            if since_best >= cfg.patience:
                stopped = f"plateau (no 0.1% gain in {cfg.patience} epochs)"
                break
    return TrainOutcome(
        row=e.detach().clone(),
        epochs=len(history),
        steps=step,
        final_loss=history[-1],
        stopped=stopped,
        history=history,
    )


def cached_features(hidden: torch.Tensor, lse: torch.Tensor) -> Features:
    return lambda idx: (hidden[idx], lse[idx])

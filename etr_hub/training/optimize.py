"""The one optimiser for expert-token rows. Pure: tensors in, rows out.

Only the k new rows are parameters (k = 1 for `train-token`; all of them for the plug-and-play
check's static setting). The rows already registered are frozen and stay in the softmax, and
their query sets are negatives labelled with their own tokens: that is what lets experts join
one by one without degrading routing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    row: torch.Tensor  # (k, C): the trained rows, (1, C) for one expert token
    epochs: int
    steps: int
    final_loss: float
    stopped: str
    history: list[float] = field(default_factory=list)


def get_lr(step: int, cfg: TrainSettings, total_steps: int) -> float:
    """The learning rate of optimiser step `step` (0-based): linear warm-up
    over `cfg.warmup_steps` steps, times a cosine decay from cfg.lr to 0 at `total_steps`.

    The two factors overlap (the decay starts at step 0), as with the one LambdaLR it replaces;
    the product is taken in the same order, so trained rows are bit-identical to before."""
    warmup = min(1.0, (step + 1) / cfg.warmup_steps)
    decay = 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return cfg.lr * (warmup * decay)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: thousands of tiny steps, where extra threads only add
    synchronisation (100-170x slower on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_rows(
    features: Features,
    n: int,
    targets: torch.Tensor,
    w_frozen: torch.Tensor,
    init: torch.Tensor,
    cfg: TrainSettings,
    k: int = 1,
) -> TrainOutcome:
    """Minimise -log p(target | query) over n queries; the k new rows, each initialised at `init`
    (1, C), are the pooled indices 1 + len(w_frozen) … len(w_frozen) + k."""
    w_new = torch.nn.Parameter(init.detach().float().reshape(1, -1).repeat(k, 1))  # (k, C)
    opt = torch.optim.AdamW([w_new], lr=cfg.lr, weight_decay=cfg.weight_decay)
    epochs = cfg.epochs or cfg.max_epochs
    total = epochs * math.ceil(n / cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[float] = []
    stopped, step = "epochs", 0
    with one_thread():
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            epoch_loss = 0.0
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                h, lse = features(idx)  # (B, C), (B,)
                loss = expert_token_loss(h, lse, torch.cat([w_frozen, w_new], dim=0), targets[idx])  # W_E (N + k, C)
                for group in opt.param_groups:
                    group["lr"] = get_lr(step, cfg, total)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                epoch_loss += loss.item() * len(idx)
            history.append(epoch_loss / n)
            if cfg.epochs is None and _plateaued(history, cfg.patience):
                stopped = f"plateau (no 0.1% gain in {cfg.patience} epochs)"
                break
    return TrainOutcome(w_new.detach().clone(), len(history), step, history[-1], stopped, history)


def _plateaued(history: list[float], patience: int) -> bool:
    """True when none of the last `patience` epochs improved the best epoch loss before it by 0.1%."""
    best, since_best = float("inf"), 0
    for loss in history:
        best, since_best = (loss, 0) if loss < best * (1 - 1e-3) else (best, since_best + 1)
    return since_best >= patience


def cached_features(hidden: torch.Tensor, lse: torch.Tensor) -> Features:
    return lambda idx: (hidden[idx], lse[idx])

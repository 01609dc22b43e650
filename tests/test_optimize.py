"""The one expert-token optimiser (etr_hub/training/optimize.py): its schedule is the paper's,
the rows it trains are bit-identical to the LambdaLR loop it replaced, it runs on one thread and
stops on a plateau."""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from etr_hub.routing import expert_token_loss
from etr_hub.training.optimize import TrainSettings, cached_features, get_lr, train_rows


def _data(n: int = 37, c: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    hidden, lse = torch.randn(n, c, generator=g), torch.randn(n, generator=g) + 5
    targets = torch.randint(0, 4, (n,), generator=g)
    w_frozen = torch.randn(2, c, generator=g) * 0.1
    init = torch.randn(1, c, generator=g) * 0.1
    return hidden, lse, targets, w_frozen, init


def test_get_lr_warms_up_linearly_then_decays_to_zero():
    cfg = TrainSettings(lr=1e-2, warmup_steps=5)
    total = 100
    lrs = [get_lr(s, cfg, total) for s in range(total + 1)]
    assert lrs[0] == 1e-2 * (1 / 5)  # cos(0) = 1: the warm-up factor alone
    assert all(a < b for a, b in pairwise(lrs[:5]))  # warm-up
    assert all(a > b for a, b in pairwise(lrs[4 : total + 1]))  # cosine decay
    assert math.isclose(lrs[50], 1e-2 * 0.5 * (1 + math.cos(math.pi / 2)), rel_tol=1e-12)
    assert lrs[total] == 0.0 and get_lr(total + 7, cfg, total) == 0.0  # past the end: stays at 0


def _lambdalr_reference(hidden, lse, targets, w_frozen, init, cfg: TrainSettings) -> tuple[torch.Tensor, list[float]]:
    """The loop train-token ran before the one optimiser: LambdaLR with the schedule lambda."""
    e = torch.nn.Parameter(init.detach().clone().float())
    opt = torch.optim.AdamW([e], lr=cfg.lr, weight_decay=cfg.weight_decay)
    n, epochs = hidden.shape[0], cfg.epochs or cfg.max_epochs
    total = epochs * math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for _ in range(epochs):
        order, epoch_loss = torch.randperm(n, generator=gen), 0.0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = expert_token_loss(hidden[idx], lse[idx], torch.cat([w_frozen, e], dim=0), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            epoch_loss += loss.item() * len(idx)
        history.append(epoch_loss / n)
    return e.detach(), history


def test_trained_row_is_bit_identical_to_the_lambdalr_loop():
    hidden, lse, targets, w_frozen, init = _data()
    cfg = TrainSettings(lr=5e-2, batch_size=4, epochs=12)
    row, history = _lambdalr_reference(hidden, lse, targets, w_frozen, init, cfg)
    outcome = train_rows(cached_features(hidden, lse), len(targets), targets, w_frozen, init, cfg)
    assert torch.equal(outcome.row, row) and outcome.history == history
    assert outcome.steps == 12 * 10 and outcome.stopped == "epochs"
    assert not torch.equal(outcome.row, init)  # it trained


def test_k_rows_train_as_one_parameter_and_on_one_thread():
    hidden, lse, targets, _, init = _data()
    threads_seen = []

    def features(idx):
        threads_seen.append(torch.get_num_threads())
        return hidden[idx], lse[idx]

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # so that pinning to one thread shows, whatever the machine
    try:
        outcome = train_rows(features, len(targets), targets, torch.zeros(0, 24), init, TrainSettings(epochs=2), k=3)
        assert set(threads_seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert outcome.row.shape == (3, 24)
    assert not torch.equal(outcome.row[0], outcome.row[1])  # each row learned its own expert's queries


def test_training_stops_on_a_plateau():
    hidden, lse, targets, w_frozen, init = _data()
    cfg = TrainSettings(lr=1e-12, weight_decay=0.0, max_epochs=50, patience=3)  # the loss cannot move
    outcome = train_rows(cached_features(hidden, lse), len(targets), targets, w_frozen, init, cfg)
    assert outcome.epochs == 1 + 3 and outcome.stopped.startswith("plateau")

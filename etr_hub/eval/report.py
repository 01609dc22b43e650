"""What both evaluations (`eval mmlu`, `eval tasks`) compute and report the same way: where each
question went, per-subject (or per-task) rows with the routing confusion, and the gap closed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from etr_hub.eval.experts import ExpertEntry

# answered(route (N,), fire (N,) = None) -> (N,) correct: the answers of a routing (where `fire`
# is False, the meta model answers)
Answered = Callable[..., torch.Tensor]


def mean(x: torch.Tensor) -> float | None:
    return float(x.float().mean()) if x.numel() else None


@dataclass
class Routed:
    """The evaluated questions (N) and where the expert tokens (E) send them."""

    queries: list[str]
    keys: list[str]  # each question's cache key
    experts: list[ExpertEntry]
    gold: torch.Tensor  # (N,) index of the expert that should answer
    hidden: torch.Tensor  # (N, C) the meta model's state at the routing position
    lse: torch.Tensor  # (N,) log-sum-exp of the word-token logits there
    max_word: torch.Tensor  # (N,) the largest word-token logit there
    w_e: torch.Tensor  # (E, C) the expert tokens

    def __post_init__(self) -> None:
        self.winner, self.fired = route(self.hidden, self.max_word, self.w_e)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.experts]

    @property
    def routing_accuracy(self) -> float | None:
        return mean(self.winner == self.gold)


def route(hidden: torch.Tensor, max_word: torch.Tensor, w_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(winner (N,), fired (N,)): the expert token that wins among the experts, and whether it
    also beats every word token (greedy decoding would emit it)."""
    expert_logits = hidden @ w_e.T  # (N, C) @ (C, E) -> (N, E)
    return expert_logits.argmax(-1), expert_logits.max(-1).values > max_word


def per_group(
    groups: list[str], expert_of: dict, routed: Routed, correct: dict[str, torch.Tensor]
) -> tuple[dict, dict]:
    """Per subject (or task) of `groups` (one per question): its expert, routing accuracy, fire
    rate and each accuracy in `correct` ((N,) tensors); and its row of the routing confusion."""
    rows, confusion = {}, {}
    for g in sorted(set(groups)):
        m = torch.tensor([x == g for x in groups])
        rows[g] = {
            "n": int(m.sum()),
            "expert": expert_of[g],
            "routing_accuracy": mean((routed.winner == routed.gold)[m]),
            "fire_rate": mean(routed.fired[m]),
        } | {key: mean(ok[m]) for key, ok in correct.items()}
        confusion[g] = {n: int((routed.winner[m] == k).sum()) for k, n in enumerate(routed.names)}
    return rows, confusion


def per_group_meta(groups: list[str], meta_ok: torch.Tensor) -> dict:
    """Per subject (or task), the meta model alone (no experts registered)."""
    rows = {}
    for g in sorted(set(groups)):
        m = torch.tensor([x == g for x in groups])
        rows[g] = {"n": int(m.sum()), "expert": None, "accuracy": mean(meta_ok[m]), "meta_accuracy": mean(meta_ok[m])}
    return rows


def gap_closed(meta: float | None, oracle: float | None, etr: float | None) -> tuple[float | None, str | None]:
    """(ETR − meta) / (oracle − meta), the paper's share of the meta → oracle gap that routing closes;
    None with the reason when there is no gap to close (the oracle expert is no better than the meta model)."""
    if meta is None or oracle is None or etr is None:
        return None, "not measured"
    if oracle <= meta:
        return (
            None,
            f"the oracle expert ({100 * oracle:.1f}%) is no better than the meta model alone ({100 * meta:.1f}%): "
            "no gap to close",
        )
    return (etr - meta) / (oracle - meta), None

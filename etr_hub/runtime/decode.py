"""Routed, KV-cached decoding of one sequence (Algorithm 1 of arXiv 2403.16854).

The meta model's next-token distribution is softmax([W_V; W_E] h) (eq. 1). Only the last
position's hidden state h is needed per step, so the expert logits cost one (1, C) @ (C, N)
matmul next to the LM head's (1, C) @ (C, V). Index i < V is a word token, V + k is expert k.
Expert tokens are never fed back: when one wins, the caller hands the answer to that expert.

Precision: the meta model runs in its dtype on its device; W_E stays float32 there, and the
routing choice compares float32 logits (the word logits upcast from the LM head's). A bfloat16
expert logit would round to 1/8 at 20: close calls between a word and an expert would then be
decided by rounding, and an expert row trained in float32 would fire where it was not trained to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from etr_hub.generation.runner import CausalRunner
from etr_hub.generation.sampling import NEG_INF, Sampling
from etr_hub.routing.math import routable_logits


# -- the routing step: small pure functions -----------------------------------------------------
def next_token_logits(
    word: torch.Tensor, expert: torch.Tensor | None, blocked: torch.Tensor | None = None, min_p: float = 0.0
) -> torch.Tensor:
    """[W_V h; W_E h + b] for one position, float32 (b: the operator's biases, already added), with
    blocked and non-finite experts at -inf, and experts whose probability is under `min_p` too."""
    word = word.reshape(-1).float()  # (V,)
    if expert is None or expert.numel() == 0:
        return word
    expert = routable_logits(expert.reshape(-1).float())  # (N,)
    if blocked is not None:
        expert = expert.masked_fill(blocked, NEG_INF)  # (N,)
    if min_p > 0:
        p = torch.softmax(torch.cat([word, expert]).float(), dim=-1)[word.numel() :]  # (N,) eq. 1, untempered
        expert = expert.masked_fill(p < min_p, NEG_INF)  # (N,)
    return torch.cat([word, expert])  # (V + N,)


def token_probability(logits: torch.Tensor, index: int) -> float:
    """softmax(logits)[index], computed stably (eq. 1, untempered)."""
    logits = logits.float()  # (V + N,)
    return float(torch.exp(logits[index] - torch.logsumexp(logits, dim=-1)))


class RoutedDecoder:
    """The meta model's side of Algorithm 1. `next()` returns a word id (< V) or V + expert index.

    A sampled word token is fed lazily at the next call, so the last token costs no forward
    pass and an expert choice leaves h (and the cache) exactly where the expert token arose.
    """

    def __init__(
        self,
        model: Any,
        w_e_t: torch.Tensor | None,
        sampling: Sampling,
        route_window: int | None = 1,
        keep_layer: int | None = None,
        bias: torch.Tensor | None = None,
        min_p: float = 0.0,
    ):
        self.runner = CausalRunner(model, keep_layer)  # keep_layer: for LoRA experts to continue its cache
        # Expert tokens compete only at the first `route_window` positions of the answer: that is
        # where their rows were trained (eq. 4, the routing position); elsewhere their logits are
        # uncalibrated and fire spuriously. None lets them compete at every step (Algorithm 1 as is).
        self.route_window = route_window
        self.steps = 0
        self.w_e_t = w_e_t if w_e_t is not None and w_e_t.numel() else None  # (C, N)
        self.n_experts = 0 if self.w_e_t is None else int(self.w_e_t.shape[1])
        self.bias = bias if bias is not None and self.n_experts else None  # (N,) the operator's calibration
        self.min_p = min_p
        self.blocked: torch.Tensor | None = None  # (N,) bool: experts that failed in this answer
        self.cooling: torch.Tensor | None = None  # (N,) bool: experts out of routing for a cool-down
        self.cooled_winners: set[int] = set()  # cooling experts whose token had the top logit (warned once)
        self.cooled_to_meta = True  # such a question stays with the meta model (False: the next-best token)
        self._cooled_unreported: list[int] = []
        self.unroutable: set[int] = set()  # experts whose logit was NaN/Inf (never routed; reported once)
        self._unreported: list[int] = []
        self.sampling = sampling
        self.h: torch.Tensor | None = None
        self.pending: list[int] = []
        self.logits: torch.Tensor | None = None
        self.vocab = 0

    @torch.inference_mode()
    def start(self, prompt_ids: Sequence[int]) -> None:
        self.h = self.runner.feed(prompt_ids)  # (1, C)

    @torch.inference_mode()
    def next(self) -> int:
        if self.pending:
            self.h = self.runner.feed(self.pending)  # (1, C)
            self.pending = []
        h = self.h
        assert h is not None, "start() first"
        word = self.runner.word_logits(h)  # (1, V)
        in_window = self.route_window is None or self.steps < self.route_window
        w_e_t = self.w_e_t if in_window else None  # (C, N) or None: experts compete here or not
        self.steps += 1
        expert = h.to(w_e_t.dtype) @ w_e_t if w_e_t is not None else None  # (1, C) @ (C, N) -> (1, N)
        if expert is not None and self.bias is not None:
            expert = expert + self.bias.to(expert.device, expert.dtype)  # (1, N) calibrated logits
        if expert is not None and not bool(torch.isfinite(expert).all()):
            bad = set(torch.nonzero(~torch.isfinite(expert.reshape(-1))).reshape(-1).tolist()) - self.unroutable
            self.unroutable |= bad
            self._unreported += sorted(bad)
        self.vocab = word.shape[-1]
        self.logits = next_token_logits(word, expert, self._out(), self.min_p)  # (V + N,)
        if expert is not None and self.cooling is not None:
            self._route_around_cooling(word, expert)
        index = self.sampling.pick(self.logits)
        if index < self.vocab:
            self.pending = [index]
            self.sampling.observe(self.pending)
        return index

    def take_unroutable(self) -> list[int]:
        """Experts newly found non-finite since the last call (to warn about once)."""
        found, self._unreported = self._unreported, []
        return found

    def probability(self, index: int) -> float:
        assert self.logits is not None
        return token_probability(self.logits, index)

    def block(self, expert: int) -> None:
        """Never pick this expert again in this answer (it failed)."""
        if self.blocked is None:
            self.blocked = torch.zeros(self.n_experts, dtype=torch.bool, device=self._device())
        self.blocked[expert] = True

    def cool(self, expert: int) -> None:
        """Out of routing for this answer because it is cooling down (its logit -inf, as if absent)."""
        if self.cooling is None:
            self.cooling = torch.zeros(self.n_experts, dtype=torch.bool, device=self._device())
        self.cooling[expert] = True

    def _device(self) -> torch.device:
        return self.w_e_t.device if self.w_e_t is not None else torch.device("cpu")

    def _out(self) -> torch.Tensor | None:
        if self.cooling is None:
            return self.blocked
        return self.cooling if self.blocked is None else self.cooling | self.blocked  # (N,)

    def _route_around_cooling(self, word: torch.Tensor, expert: torch.Tensor) -> None:
        """A cooling expert is already out of `self.logits`; if its token had the top logit, its question
        stays with the meta model unless the operator chose the next-best token (--fallback next-expert)."""
        cooled_winner = self._note_cooled_winner(next_token_logits(word, expert, self.blocked, self.min_p))
        if cooled_winner and self.cooled_to_meta:
            every = torch.ones(self.n_experts, dtype=torch.bool)  # (N,)
            self.logits = next_token_logits(word, expert, every)  # (V + N,) words only

    def _note_cooled_winner(self, logits: torch.Tensor) -> bool:
        """Would a cooling expert's token have had the top logit here? (warned about once per answer)"""
        assert self.cooling is not None
        top = int(logits.argmax()) - self.vocab
        if not (top >= 0 and bool(self.cooling[top])):
            return False
        if top not in self.cooled_winners:
            self.cooled_winners.add(top)
            self._cooled_unreported.append(top)
        return True

    def take_cooled_winners(self) -> list[int]:
        """Cooling experts newly found to have had the top logit since the last call (to warn about once)."""
        found, self._cooled_unreported = self._cooled_unreported, []
        return found

    def extend(self, ids: Sequence[int]) -> None:
        """Add tokens the meta model did not sample (an expert's text after a failure)."""
        self.pending.extend(ids)
        self.sampling.observe(ids)

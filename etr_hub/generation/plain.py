"""Unrouted KV-cached decoding: an expert continuing a handed-over answer, or a raw completion."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import torch

from etr_hub.generation.runner import CausalRunner
from etr_hub.generation.sampling import Sampling
from etr_hub.generation.shared_prefix import feed_from_donor


@torch.inference_mode()
def _prefill(runner: CausalRunner, ids: Sequence[int]) -> torch.Tensor:
    return runner.feed(ids)


def plain_tokens(
    model: Any,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    sampling: Sampling,
    eos_ids: frozenset[int],
    runner: CausalRunner | None = None,
    donor: CausalRunner | None = None,
) -> Generator[int, None, None]:
    """Unrouted KV-cached decoding (experts, raw completions). Yields token ids; stops after an
    eos id (which is yielded, so callers can tell "stop" from "length"). A `runner` whose cache
    holds an earlier sequence is reused for the prefix it shares with `prompt_ids`; a `donor`
    (the meta runner, for a LoRA expert on its upper layers) for what the meta model encoded."""
    runner = runner or CausalRunner(model)
    rest = runner.rewind(prompt_ids)
    h = None
    if donor is not None:
        h, rest = feed_from_donor(runner, donor, rest)  # (1, C) or None
    if rest:
        h = _prefill(runner, rest)  # (1, C)
    assert h is not None  # rewind leaves at least the last id to feed
    for step in range(max_new_tokens):
        token = _pick(runner, h, sampling)
        sampling.observe([token])
        yield token
        if token in eos_ids or step == max_new_tokens - 1:
            return
        h = _step(runner, token)


@torch.inference_mode()
def _pick(runner: CausalRunner, h: torch.Tensor, sampling: Sampling) -> int:
    return sampling.pick(runner.word_logits(h).reshape(-1))  # (V,)


@torch.inference_mode()
def _step(runner: CausalRunner, token: int) -> torch.Tensor:
    return runner.feed([token])

"""Continue the meta model's KV cache under a LoRA expert that leaves the lower layers alone.

A LoRA adapter on decoder layers k..L-1 only (the shipped experts adapt the last 8 of
SmolLM2's 30) computes exactly the meta model's keys/values in layers 0..k-1, and the same
residual stream entering layer k. So when such an expert takes over, the part of its prompt
the meta model has already encoded is not recomputed in full: the expert copies the meta
cache of layers < k and runs only layers >= k, starting from the residual the meta runner
kept at layer k (CausalRunner(keep_layer=k)). That is the cost of a switch (the paper's
Table 5): 8 of 30 layers over the prompt instead of 30.

`reuse_is_exact` checks the claim numerically once per expert at load time, so a model
whose forward does something else with `inputs_embeds` (or an adapter that touches more than
its config says) silently falls back to recomputing the prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from etr_hub.generation.runner import CausalRunner, common_prefix
from etr_hub.models.compat import cache_kwarg


@contextmanager
def only_layers_from(decoder: Any, first: int) -> Iterator[None]:
    """Let `decoder`'s forward run layers first..L-1 only (each keeps its own layer index, so
    its keys/values still land in its own cache slot)."""
    every = decoder.layers
    decoder.layers = nn.ModuleList(list(every)[first:])
    try:
        yield
    finally:
        decoder.layers = every


@torch.inference_mode()
def feed_from_donor(
    runner: CausalRunner, donor: CausalRunner, ids: Sequence[int]
) -> tuple[torch.Tensor | None, list[int]]:
    """Feed the leading part of `ids` that `donor` (the meta runner) has already encoded.

    `runner` is the expert's, holding `runner.ids`; `ids` continue them. Returns (the (1, C)
    hidden state of the last position fed, or None if nothing was), and the ids still to feed.
    """
    start, k = runner.length, donor.keep_layer
    residual = donor.residual()  # (1, T_donor, C) entering layer k
    shared = common_prefix(donor.ids, [*runner.ids, *ids])
    if k is None or residual is None or shared <= start:
        return None, list(ids)
    lower = donor.cache.layers[:k]
    if any(
        getattr(layer, "keys", None) is None or layer.keys.shape[-2] != donor.length for layer in lower
    ):  # e.g. a sliding window
        return None, list(ids)
    cache = runner.ensure_cache()
    with only_layers_from(runner.decoder, k):  # layers >= k over the new positions, from the meta's residual
        out = runner.decoder(
            inputs_embeds=residual[:, start:shared], **{cache_kwarg(runner.decoder): cache}, use_cache=True
        )
    for i, layer in enumerate(lower):  # layers < k: the meta's keys/values as they are
        cache.update(layer.keys[:, :, start:shared], layer.values[:, :, start:shared], i)  # (B, H, S, D) each
    runner.ids.extend(ids[: shared - start])
    return out.last_hidden_state[:, -1], list(ids[shared - start :])  # (1, C)


@torch.inference_mode()
def reuse_is_exact(
    expert_model: Any, meta_model: Any, first_layer: int, probe: Sequence[int], *, tol: float = 1e-3
) -> bool:
    """Does continuing the meta cache from `first_layer` give what a full recompute gives?

    Compares the last hidden state of `probe` and of one more token after it, within `tol` or,
    in half precision, a few units of its rounding (the two paths may sum in another order)."""
    try:
        meta = CausalRunner(meta_model, keep_layer=first_layer)
        meta.feed(probe)
        full, reused = CausalRunner(expert_model), CausalRunner(expert_model)
        h_full = full.feed(probe)  # (1, C)
        tol = max(tol, 4 * torch.finfo(h_full.dtype).eps)
        h_reused, rest = feed_from_donor(reused, meta, probe)
        if h_reused is None or rest or not torch.allclose(h_full, h_reused, rtol=tol, atol=tol):
            return False
        return bool(torch.allclose(full.feed(probe[:1]), reused.feed(probe[:1]), rtol=tol, atol=tol))
    except Exception:
        return False

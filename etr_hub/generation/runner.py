"""A frozen causal LM decoding one sequence with a KV cache: the meta model's and every local expert's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from etr_hub.models.compat import cache_kwarg


class CausalRunner:
    """Prefill once, then one token per step; returns the last position's hidden state.

    `ids` are the tokens whose keys/values are in the cache, so a later sequence that shares a
    prefix with them can `rewind` to it and feed only the rest (a prefix cache).
    """

    def __init__(self, model: Any, keep_layer: int | None = None):
        self.model = model
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.device = model.get_input_embeddings().weight.device  # the ids go where the model is
        self.cache: Any = None
        self.ids: list[int] = []
        # The residual stream entering decoder layer `keep_layer`, one (1, t, C) chunk per feed:
        # a LoRA expert adapted only from that layer on continues from it (see shared_prefix.py).
        layers = getattr(self.decoder, "layers", None)  # Llama-style decoders; others keep nothing
        self.keep_layer = (
            keep_layer if keep_layer is not None and layers is not None and 0 < keep_layer < len(layers) else None
        )
        self._residual: list[torch.Tensor] = []

    @property
    def length(self) -> int:
        return len(self.ids)

    def ensure_cache(self) -> Any:
        from transformers import DynamicCache

        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
        return self.cache

    def feed(self, ids: Sequence[int]) -> torch.Tensor:
        """Append `ids` to the sequence; (1, C) hidden state of the last of them."""
        self.ensure_cache()
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)  # (1, T)
        hook = None
        if self.keep_layer is not None:
            hook = self.decoder.layers[self.keep_layer].register_forward_pre_hook(self._keep_residual, with_kwargs=True)
        try:
            out = self.decoder(input_ids=x, **{cache_kwarg(self.decoder): self.cache}, use_cache=True)
        finally:
            if hook is not None:
                hook.remove()
        self.ids.extend(ids)
        return out.last_hidden_state[:, -1]  # (1, C)

    def _keep_residual(self, _module: Any, args: tuple, kwargs: dict) -> None:
        h = args[0] if args else kwargs["hidden_states"]  # (1, T, C)
        self._residual.append(h.detach())

    def residual(self) -> torch.Tensor | None:
        """(1, length, C) input of decoder layer `keep_layer` at every cached position, if kept."""
        if self.keep_layer is None or not self._residual:
            return None
        if len(self._residual) > 1:
            self._residual = [torch.cat(self._residual, dim=1)]  # (1, length, C)
        kept = self._residual[0]
        return kept if kept.shape[1] == self.length else None

    def word_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)  # (1, C) -> (1, V)

    def rewind(self, ids: Sequence[int]) -> list[int]:
        """Keep the cached positions `ids` starts with (never all of `ids`: the last one must be
        fed to get its hidden state); returns the ids still to feed."""
        keep = min(common_prefix(self.ids, ids), len(ids) - 1)
        self.truncate(keep)
        return list(ids[keep:])

    def truncate(self, keep: int, *, compact: bool = False) -> None:
        """Forget every cached position from `keep` on. `compact` copies what is kept into
        tight storage (a cropped cache is a view that still holds the whole buffer)."""
        keep = max(0, keep)
        kept = self.residual()  # (1, length, C) or None
        if keep < self.length and keep > 0:
            try:
                self.cache.crop(keep - self.length)  # a negative count: tokens to remove
                if self.cache.get_seq_length() != keep:
                    raise ValueError("crop kept the wrong length")
            except Exception:
                keep = 0
        if keep == 0:
            self.cache, self.ids, self._residual = None, [], []
            return
        self.ids = self.ids[:keep]
        self._residual = [] if kept is None else [kept[:, :keep].clone() if compact else kept[:, :keep]]
        if compact:
            for layer in getattr(self.cache, "layers", []):
                for attr in ("keys", "values"):
                    if isinstance(getattr(layer, attr, None), torch.Tensor):
                        setattr(layer, attr, getattr(layer, attr).clone())

    def cache_bytes(self) -> int:
        total = 0
        for layer in getattr(self.cache, "layers", None) or []:
            for attr in ("keys", "values"):
                t = getattr(layer, attr, None)
                if isinstance(t, torch.Tensor):
                    total += t.untyped_storage().nbytes()
        return total


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n

"""Fast forwards for plain LoRA layers, to keep the per-token cost of a LoRA expert low.

PEFT's LoRA layer does several module calls, dtype casts and adapter bookkeeping per forward;
at one token per step on a small model that Python overhead is several percent of decoding.
After PEFT has loaded and validated an adapter, each plain LoRA linear layer (one adapter, no
DoRA or other variant, no LoRA bias, not fan-in-fan-out) is swapped, in the expert's own clone
only, for `base(x) + (x A^T)(s B)^T` with the same tensors. Anything else keeps PEFT's layer.

While the expert answers, `merged_projections` goes one step further: each lean layer gets a
NEW tensor W + s·B·A and computes one plain matmul, exactly the meta model's per-token cost
(the two small LoRA matmuls per layer still cost ~1.7% per token on SmolLM2-135M on CPU).
The meta model's W is only read, never written: the merged copies are separate tensors, held
by the expert's clone for the duration of one answer (on SmolLM2 with q/v adapted, 53 MB) and
dropped afterwards, so going back is exact by construction, not by unmerge arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class LeanLoraLinear(nn.Module):
    a_t: torch.Tensor  # buffers, registered in __init__
    b_t: torch.Tensor

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scaling: float):
        super().__init__()
        self.base = base  # the meta model's own Linear (shared weight)
        self.register_buffer("a_t", a.T.contiguous(), persistent=False)  # (C_in, r)
        self.register_buffer("b_t", (b * scaling).T.contiguous(), persistent=False)  # (r, C_out), scaling folded in
        self.merged: torch.Tensor | None = None  # (C_out, C_in) W + s·B·A while the expert answers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged is not None:
            return F.linear(x, self.merged, self.base.bias)  # (..., C_in) -> (..., C_out)
        return self.base(x) + (x @ self.a_t) @ self.b_t  # (..., C_in) -> (..., C_out)

    def merged_weight(self) -> torch.Tensor:
        """A new tensor W + (s B) A; W itself is only read."""
        return torch.addmm(self.base.weight, self.b_t.T, self.a_t.T)  # (C_out, C_in) + (C_out, r) @ (r, C_in)


@contextmanager
def merged_projections(layers: Sequence[LeanLoraLinear]) -> Iterator[None]:
    """Let `layers` use merged copies of their weights inside the block. Nested or interleaved
    uses are safe: a layer merged by an outer block is left to it (and the lean path computes
    the same function, so a block that ends early never changes what another one computes)."""
    mine = [layer for layer in layers if layer.merged is None]
    try:
        with torch.no_grad():
            for layer in mine:
                layer.merged = layer.merged_weight()
        yield
    finally:
        for layer in mine:
            layer.merged = None


def _plain(layer: Any) -> tuple[nn.Linear, torch.Tensor, torch.Tensor, float] | None:
    """(base, A, B, scaling) when `layer` is a vanilla single-adapter PEFT LoRA Linear, else None."""
    try:
        from peft.tuners.lora.layer import Linear as PeftLoraLinear
    except ImportError:
        return None
    if (
        type(layer) is not PeftLoraLinear
        or layer.merged
        or layer.disable_adapters
        or getattr(layer, "fan_in_fan_out", False)
    ):
        return None
    names = list(layer.lora_A.keys())
    if len(names) != 1 or list(layer.active_adapters) != names:
        return None
    name = names[0]
    if (
        name in getattr(layer, "lora_variant", {})
        or getattr(layer, "use_dora", {}).get(name)
        or getattr(layer, "lora_bias", {}).get(name)
    ):
        return None
    a, b, base = layer.lora_A[name], layer.lora_B[name], layer.base_layer
    if (
        not (isinstance(base, nn.Linear) and isinstance(a, nn.Linear) and isinstance(b, nn.Linear))
        or a.bias is not None
        or b.bias is not None
    ):
        return None
    if a.weight.dtype != base.weight.dtype:
        return None
    return base, a.weight.detach(), b.weight.detach(), float(layer.scaling[name])


def make_lean(model: Any) -> list[LeanLoraLinear]:
    """Swap every plain LoRA layer in `model` (a PeftModel) for a LeanLoraLinear; returns them."""
    swapped = []
    for name, module in list(model.named_modules()):
        parts = _plain(module)
        if parts is None:
            continue
        parent_name, _, child = name.rpartition(".")
        lean = LeanLoraLinear(*parts)
        setattr(model.get_submodule(parent_name) if parent_name else model, child, lean)
        swapped.append(lean)
    return swapped


def first_adapted_layer(model: Any) -> int | None:
    """Index of the first decoder layer holding an adapted module; None if an adapted module
    sits outside the decoder layers (e.g. the embeddings) or nothing is adapted."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import ModulesToSaveWrapper
    except ImportError:
        return None
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        return None
    where = {id(m): i for i, layer in enumerate(layers) for m in layer.modules()}
    adapted = [m for m in model.modules() if isinstance(m, (LeanLoraLinear, BaseTunerLayer, ModulesToSaveWrapper))]
    if not adapted or any(id(m) not in where for m in adapted):
        return None
    return min(where[id(m)] for m in adapted)

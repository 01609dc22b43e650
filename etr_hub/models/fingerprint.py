"""The meta model's identity: a hash of its output-embedding matrix.

An expert token is one extra row of this matrix, so it only fits the exact meta model it was
trained against. `meta_fingerprint` is what bundle manifests record as `meta.fingerprint` and
what the registry keys meta models by.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from etr_hub.errors import ModelLoadError

if TYPE_CHECKING:
    import torch


def output_embedding(model: Any) -> torch.Tensor:
    """The (V, C) output-embedding (LM head) weight, detached. Works on PeftModel wrappers too."""
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is None or weight.dim() != 2:
        raise ModelLoadError(
            f"model {type(model).__name__} has no output-embedding matrix",
            "use a causal language model with a linear LM head",
        )
    return weight.detach()


def meta_fingerprint(model: Any) -> str:
    """sha256 (hex) of the output-embedding weight as contiguous little-endian float32 bytes.

    The manifest's meta fingerprint. The same weights loaded in bfloat16 hash differently, so
    fingerprint the model as loaded in float32 (load_causal_lm's default).
    """
    import torch

    weight = output_embedding(model).to(device="cpu", dtype=torch.float32).contiguous()
    return hashlib.sha256(weight.numpy().data).hexdigest()

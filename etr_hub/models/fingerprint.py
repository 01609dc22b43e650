"""The meta model's identity: a hash of its output-embedding matrix.

An expert token is one extra row of this matrix, so it only fits the exact meta model it was
trained against. `meta_fingerprint` is what bundle manifests record as `meta.fingerprint` and
what the registry keys meta models by.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
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

    The manifest's meta fingerprint. The same weights loaded in bfloat16 hash differently (the
    values are rounded), so a model loaded in another dtype than float32 is fingerprinted from
    its checkpoint's own values (`checkpoint_fingerprint`; load_causal_lm(fingerprint=True))."""
    return fingerprint_tensor(output_embedding(model))


def fingerprint_tensor(weight: torch.Tensor) -> str:
    import torch

    weight = weight.detach().to(device="cpu", dtype=torch.float32).contiguous()  # (V, C)
    return hashlib.sha256(weight.numpy().data).hexdigest()


def checkpoint_fingerprint(folder: str | Path, model: Any) -> str | None:
    """The fingerprint of `model`'s output embedding as the *.safetensors files in `folder` store it
    (exact whatever dtype `model` was loaded in). None where no file holds it under one of the
    weight's parameter names, or what a file holds is not what was loaded (rounded to its dtype)."""
    import torch
    from safetensors import safe_open

    weight = output_embedding(model)  # (V, C), as loaded
    names = [  # tied embeddings: the input embedding's name too
        n
        for n, p in model.named_parameters(remove_duplicate=False)
        if p.data_ptr() == weight.data_ptr() and p.shape == weight.shape
    ]
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            name = next((n for n in names if n in set(f.keys())), None)
            if name is None:
                continue
            stored = f.get_tensor(name)  # (V, C) in the checkpoint's dtype
        same = stored.shape == weight.shape and torch.equal(stored.to(weight.dtype), weight.cpu())
        return fingerprint_tensor(stored) if same else None
    return None

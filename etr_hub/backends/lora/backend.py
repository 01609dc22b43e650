"""LoRA experts over the meta model's own base weights.

`load_causal_lm(ref, meta=...)` wraps a structural clone of the meta model whose parameters
ARE the meta model's tensors, so each adapter adds only its LoRA matrices. The adapter is on
in that clone and absent from the meta model itself, which therefore decodes at full speed
and unchanged. The meta model's KV cache is not valid for the adapter (it changes the
attention projections), so the expert recomputes the prefix once, reusing the token ids.
Plain LoRA layers then get a lean forward (lean.py) to keep the per-token cost low.
"""

from __future__ import annotations

from etr_hub.backends.local.backend import LocalBackend


class LoraBackend(LocalBackend):
    kind = "lora"

    def load(self) -> None:
        from etr_hub.backends.lora.lean import make_lean

        super().load()
        self.lean_layers = make_lean(self.loaded.model)

    @property
    def shares_base(self) -> bool:
        return bool(self.loaded is not None and self.loaded.base_shares_meta)

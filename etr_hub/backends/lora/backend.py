"""LoRA experts over the meta model's own base weights.

`load_causal_lm(ref, meta=...)` wraps a structural clone of the meta model whose parameters
ARE the meta model's tensors, so each adapter adds only its LoRA matrices. The adapter is on
in that clone and absent from the meta model itself, which therefore decodes at full speed
and unchanged. Plain LoRA layers get a lean forward (lean.py); while the expert answers they
use merged copies W + s·B·A of the adapted projections (new tensors, dropped after the
answer), so each token costs what a meta model token costs. The meta model's KV cache is not
valid under the adapter (it changes the attention projections), so the expert recomputes the
prompt, reusing the token ids and whatever prefix its own prefix cache still holds.
"""

from __future__ import annotations

import contextlib

from etr_hub.backends.local.backend import LocalBackend


class LoraBackend(LocalBackend):
    kind = "lora"

    def load(self) -> None:
        from etr_hub.backends.lora.lean import make_lean

        super().load()
        self.lean_layers = make_lean(self.loaded.model)

    def decoding(self) -> contextlib.AbstractContextManager:
        from etr_hub.backends.lora.lean import merged_projections

        return merged_projections(self.lean_layers)

    @property
    def shares_base(self) -> bool:
        return bool(self.loaded is not None and self.loaded.base_shares_meta)

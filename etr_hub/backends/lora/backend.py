"""LoRA experts over the meta model's own base weights.

`load_causal_lm(ref, meta=...)` wraps a structural clone of the meta model whose parameters
ARE the meta model's tensors, so each adapter adds only its LoRA matrices. The adapter is on
in that clone and absent from the meta model itself, which therefore decodes at full speed
and unchanged. Plain LoRA layers get a lean forward (lean.py); while the expert answers they
use merged copies W + s·B·A of the adapted projections (new tensors, dropped after the
answer), so each token costs what a meta model token costs.

Taking over costs the prompt's keys/values under the adapter. An adapter on the upper layers
only (layers_to_transform) leaves the lower layers' keys/values equal to the meta model's, so
the expert continues the meta model's own cache and recomputes just the adapted layers
(generation/shared_prefix.py); whatever is left is fed through its prefix cache as usual.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, ClassVar

from etr_hub.backends.base import ExpertSpec, Handoff
from etr_hub.backends.local.backend import LocalBackend
from etr_hub.backends.lora.lean import first_adapted_layer, make_lean, merged_projections
from etr_hub.generation.shared_prefix import reuse_is_exact


class LoraBackend(LocalBackend):
    ref_kinds: ClassVar[tuple[str, ...]] = ("peft",)

    @classmethod
    def meta_layer_to_keep(cls, spec: ExpertSpec) -> int | None:
        """The adapter's first decoder layer, from its config (None: all layers, or unknown)."""
        if spec.ref.base is not None or not spec.ref.path:
            return None
        try:
            config = json.loads((Path(spec.ref.path) / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(config, dict):
            return None
        layers = config.get("layers_to_transform")
        layers = [layers] if isinstance(layers, int) else layers
        if not layers or config.get("modules_to_save") or not all(isinstance(i, int) for i in layers):
            return None
        return min(layers) or None

    def load(self) -> None:
        super().load()
        self.lean_layers = make_lean(self.loaded.model)
        self.first_layer = self._first_layer_to_recompute()

    def _first_layer_to_recompute(self) -> int | None:
        """The first decoder layer the adapter changes, if continuing the meta cache below it is
        exact (checked on a probe sequence); None: recompute the whole prompt."""
        if not self.shares_base:
            return None
        first = first_adapted_layer(self.loaded.model)
        vocab = int(self.meta.model.config.vocab_size)
        probe = [(7919 * i) % vocab for i in range(1, 17)]
        return first if first and reuse_is_exact(self.loaded.model, self.meta.model, first, probe) else None

    def donor(self, handoff: Handoff) -> Any:
        runner = handoff.meta_runner
        if (
            self.first_layer is None
            or runner is None
            or runner.keep_layer is None
            or runner.keep_layer > self.first_layer
        ):
            return None
        return runner

    def decoding(self) -> contextlib.AbstractContextManager:
        return merged_projections(self.lean_layers)

    @property
    def shares_base(self) -> bool:
        return bool(self.loaded is not None and self.loaded.base_shares_meta)

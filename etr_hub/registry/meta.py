"""Register the meta model: load it once, fingerprint its output embedding, record it."""

from __future__ import annotations

from collections.abc import Callable

from etr_hub.models.refs import ModelRef
from etr_hub.registry.api import Registry
from etr_hub.registry.tables import MetaModel

DEFAULT_META = "embedded:smollm2-135m-instruct"


def register_meta_model(registry: Registry, ref: ModelRef, status: Callable[[str], None] | None = None) -> MetaModel:
    from etr_hub.models.fingerprint import meta_fingerprint, output_embedding
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.routing.math import max_row_norm

    loaded = load_causal_lm(ref, status=status)
    w_v = output_embedding(loaded.model)  # (V, C)
    return registry.register_meta(
        reference=ref.model_dump(mode="json", exclude_none=True),
        display=ref.display(),
        fingerprint=meta_fingerprint(loaded.model),
        hidden_size=int(w_v.shape[1]),
        vocab_size=int(w_v.shape[0]),
        max_row_norm=max_row_norm(w_v),  # `expert add` checks token rows against it without loading the model
    )

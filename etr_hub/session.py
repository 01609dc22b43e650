"""One session with the registry's meta model, shared by query sets, training and evaluation.

The meta model is loaded at most once and checked against the fingerprint the registry
recorded, on the device and in the dtype asked for (models/device.py; experts loaded through
it follow it). What the three read through it is written here once: the routing states at each
query's routing position (cached per meta model and dtype, so no forward pass is paid twice), the
expert-token initialisation (the mean of the output-embedding rows), a stored query set, an
expert's token row and the project's everyday prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from etr_hub.cache import RoutingStates, StateCache, query_key
from etr_hub.errors import DataError, EtrHubError
from etr_hub.jsonl import iter_jsonl, query_column
from etr_hub.models.refs import ModelRef

if TYPE_CHECKING:
    import torch

    from etr_hub.models.loading import LoadedModel
    from etr_hub.registry import Registry
    from etr_hub.registry.tables import Expert, QuerySet

# progress(description, total) -> advance(n): one progress bar per pass (the CLI passes rich bars).
ProgressFactory = Callable[[str, int], Callable[[int], None]]
# status(message): a one-line text update while something slow happens (a model loading).
Status = Callable[[str], None] | None

# The project's own everyday prompts: word-token negatives in training, false-fire checks in eval.
GENERAL_PROMPTS = Path(__file__).resolve().parent / "data" / "general_prompts.jsonl"


def no_progress(_description: str, _total: int) -> Callable[[int], None]:
    return lambda _n: None


class ModelSession:
    """Loads the registry's meta model (and experts on it) at most once, checking its identity.

    `device` / `dtype`: where (None: ETR_HUB_DEVICE / ETR_HUB_DTYPE, else auto), checked here,
    before anything loads. What the meta model computes is cached per dtype (`cache_id`)."""

    def __init__(
        self, registry: Registry, status: Status = None, *, device: str | None = None, dtype: str | None = None
    ):
        from etr_hub.models.device import placement
        from etr_hub.models.loading import config_dtype

        self.registry = registry
        self.meta_row = registry.require_meta()
        self.status = status
        place = placement(device, dtype)
        self.device = place.device
        self.dtype = place.dtype_for(config_dtype(ModelRef.model_validate(self.meta_row.reference)))
        self.cache_id = cache_id(self.meta_row.fingerprint, self.dtype)
        self.states = StateCache(registry.settings.cache_dir, self.meta_row.fingerprint, self.dtype)
        self._meta: LoadedModel | None = None

    @property
    def meta(self) -> LoadedModel:
        if self._meta is None:
            from etr_hub.models.loading import load_causal_lm

            ref = ModelRef.model_validate(self.meta_row.reference)
            loaded = load_causal_lm(
                ref, device=self.device, dtype=self.dtype, status=self.status, role="meta", fingerprint=True
            )
            if loaded.fingerprint != self.meta_row.fingerprint:
                raise EtrHubError(
                    f"the meta model at {self.meta_row.display} is not the one the registry recorded "
                    "(fingerprint changed)",
                    "re-run `etr-hub init --meta REF` with the original model, or retrain the experts",
                )
            self._meta = loaded
        return self._meta

    def expert(self, ref: ModelRef) -> LoadedModel:
        from etr_hub.models.loading import load_causal_lm

        needs_meta = ref.kind == "peft" and ref.base is None
        meta = self.meta if needs_meta else None
        return load_causal_lm(ref, meta=meta, device=self.device, dtype=self.dtype, status=self.status)

    def routing_states(
        self,
        queries: list[str],
        progress: ProgressFactory = no_progress,
        *,
        batch_size: int = 16,
        description: str = "meta model pass (routing states)",
    ) -> RoutingStates:
        """(hidden (N, C), lse_V (N,), top word logit (N,)) at each query's routing position: from the
        cache, with one meta pass over the queries not cached yet."""
        from etr_hub.models.scoring import routing_states

        keys = [query_key(q) for q in queries]
        states, missing = self.states.get(keys)
        if missing:
            meta = self.meta
            new = routing_states(
                meta.model,
                meta.tokenizer,
                [queries[i] for i in missing],
                batch_size=batch_size,
                advance=progress(description, len(missing)),
            )
            self.states.put([keys[i] for i in missing], new)
            self.cache_mean_row()  # the meta model is loaded now: the init costs nothing more
            if states is None:
                return new
            for cached, computed in zip(states, new):
                cached[missing] = computed
        assert states is not None
        return states

    def cache_mean_row(self) -> None:
        from etr_hub.models.fingerprint import output_embedding

        self.states.put_mean_row(output_embedding(self.meta.model))

    def mean_row(self) -> torch.Tensor:
        """(1, C) the expert-token initialisation: the mean of the meta model's output-embedding
        rows, cached with the routing states (the meta model loads only if it is not)."""
        row = self.states.get_mean_row()
        if row is None:
            self.cache_mean_row()
            row = self.states.get_mean_row()
        assert row is not None
        return row


def cache_id(fingerprint: str, dtype: str) -> str:
    """What the meta model computes is keyed by this: its fingerprint, and the dtype unless float32
    (a bfloat16 pass rounds differently; float32 keeps the keys the caches had before dtypes)."""
    return fingerprint if dtype == "float32" else f"{fingerprint}-{dtype}"


def query_set_queries(registry: Registry, qs: QuerySet) -> list[str]:
    """The queries of a stored query set (each line must hold a non-empty 'query')."""
    return query_column(registry.abspath(qs.store_path))


def expert_row(registry: Registry, expert: Expert) -> torch.Tensor:
    """(1, C) a registered expert's token row, checked against its manifest, as float32."""
    from etr_hub.bundle import Manifest
    from etr_hub.bundle.io import read_token

    token = registry.abspath(expert.token_path)
    return read_token(token.parent, token, Manifest.model_validate(expert.manifest)).float()


def read_general_prompts(path: Path | None = GENERAL_PROMPTS, split: str = "eval") -> list[str]:
    """The everyday prompts of one split ('train': negatives; 'eval': false-fire checks).

    A row without a 'split' belongs to every split, a row without a non-empty 'query' string is
    passed over; a line that is not a JSON object is a DataError naming file and line. No file
    (None, or a path that does not exist) reads as no prompts: the caller says what is not measured."""
    if path is None or not Path(path).is_file():
        return []
    prompts = []
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(
                f"{path}:{lineno} is not a JSON object", 'write one {"query": …, "split": …} object per line'
            )
        if row.get("split", split) == split and isinstance(row.get("query"), str) and row["query"].strip():
            prompts.append(row["query"])
    return prompts

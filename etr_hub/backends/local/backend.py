"""Local transformers experts: KV-cached decoding in this process, the expert's own template.

Each expert keeps the keys/values of the last prompt it was handed (a prefix cache, at most
PREFIX_CACHE_TOKENS positions, counted in its memory): the next hand-over recomputes only what
differs, e.g. the user's question but not the shared system prompt, or only the new turn of
a conversation the expert answered before. An expert runs where the meta model runs, in its
dtype (models/device.py): one --device and --dtype place them all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

from etr_hub.backends.base import Chunk, ExpertBackend, ExpertError, ExpertSpec, GenSettings, Handoff
from etr_hub.errors import EtrHubError
from etr_hub.generation.modelinfo import context_limit, eos_ids, same_tokenizer, unshared_bytes
from etr_hub.generation.plain import plain_tokens
from etr_hub.generation.runner import CausalRunner
from etr_hub.generation.sampling import Sampling
from etr_hub.generation.text import Detokenizer
from etr_hub.models.chat import routing_prompt_ids, to_ids
from etr_hub.models.device import placement_of
from etr_hub.models.loading import load_causal_lm

PREFIX_CACHE_TOKENS = 512


class LocalBackend(ExpertBackend):
    ref_kinds: ClassVar[tuple[str, ...]] = ("hf", "gguf", "embedded")  # and its own kind, local

    def __init__(self, spec: ExpertSpec, meta: Any):
        super().__init__(spec, meta)
        self.loaded: Any = None
        self.shares_tokenizer = False
        self.eos: frozenset[int] = frozenset()
        self.context = 0
        self._bytes = 0
        self._prefix: Any = None  # a CausalRunner holding the last prompt's keys/values

    def load(self) -> None:
        device, dtype = placement_of(self.meta.model)  # where the meta model is
        try:
            self.loaded = load_causal_lm(
                self.spec.ref, meta=self.meta, device=device, dtype=dtype, role=f"expert '{self.spec.name}'"
            )
        except EtrHubError as exc:
            raise ExpertError(exc.problem, exc.fix) from None
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        self.shares_tokenizer = same_tokenizer(tokenizer, self.meta.tokenizer)
        self.eos = eos_ids(model, tokenizer)
        self.context = context_limit(model, tokenizer)
        self._bytes = unshared_bytes(model, self.meta.model)

    @property
    def memory_bytes(self) -> int:
        return self._bytes + (self._prefix.cache_bytes() if self._prefix is not None else 0)

    def unload(self) -> None:
        self.loaded = self._prefix = None

    def clear_prefix_cache(self) -> None:
        self._prefix = None

    def donor(self, handoff: Handoff) -> Any:
        """The meta runner whose cache this expert may continue (LoRA experts), else None."""
        return None

    def decoding(self) -> contextlib.AbstractContextManager:
        """Entered around each answer (LoRA experts swap in merged weights here)."""
        return contextlib.nullcontext()

    def prompt_ids(self, handoff: Handoff) -> list[int]:
        """The expert's input: the meta model's ids when the tokenizers agree, else the
        conversation in the expert's own chat template with the assistant turn left open."""
        tokenizer = self.loaded.tokenizer
        if handoff.prompt is not None:
            return to_ids(tokenizer(handoff.prompt, add_special_tokens=True))
        if self.shares_tokenizer and handoff.meta_ids is not None:
            return list(handoff.meta_ids)
        ids, _ = routing_prompt_ids(tokenizer, handoff.messages or [])
        if handoff.partial:
            ids += to_ids(tokenizer(handoff.partial, add_special_tokens=False))
        return ids

    def answer_ids(self, handoff: Handoff) -> list[int]:
        """The meta model's partial answer in this expert's tokens: the penalties count it too."""
        if self.shares_tokenizer and handoff.answer_ids is not None:
            return list(handoff.answer_ids)
        return to_ids(self.loaded.tokenizer(handoff.partial, add_special_tokens=False)) if handoff.partial else []

    def generate(self, handoff: Handoff, settings: GenSettings) -> Iterator[Chunk]:
        if self.loaded is None:
            raise ExpertError(f"expert '{self.spec.name}' is not loaded")
        budget = max(0, min(settings.max_new_tokens, self.context - 1))
        ids = self.prompt_ids(handoff)[-(self.context - budget) :]  # keep the end: the open turn
        detok = Detokenizer(self.loaded.tokenizer, ids[-4:])
        sampling = Sampling.of(settings, answer=self.answer_ids(handoff))
        stops = frozenset() if settings.ignore_eos else self.eos
        runner, self._prefix = (
            self._prefix or CausalRunner(self.loaded.model),
            None,
        )  # taken: interleaved answers never share it
        consistent = False  # the cache matches runner.ids (not so after an error inside a forward pass)
        try:
            with self.decoding():
                tokens = plain_tokens(
                    self.loaded.model,
                    ids,
                    max_new_tokens=budget,
                    sampling=sampling,
                    eos_ids=stops,
                    runner=runner,
                    donor=self.donor(handoff),
                )
                try:
                    for token in tokens:
                        consistent = True
                        if token in stops:
                            yield Chunk(detok.flush(), 1, "stop")
                            return
                        yield Chunk(detok.push(token), 1)
                        consistent = False
                    consistent = True
                finally:
                    tokens.close()
            yield Chunk(detok.flush(), 0, "length")
        finally:
            if consistent:
                runner.truncate(min(len(ids), PREFIX_CACHE_TOKENS), compact=True)  # the prompt, not this answer
                self._prefix = runner

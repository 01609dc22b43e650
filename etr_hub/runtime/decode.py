"""Routed, KV-cached decoding of one sequence (Algorithm 1 of arXiv 2403.16854).

The meta model's next-token distribution is softmax([W_V; W_E] h) (eq. 1). Only the last
position's hidden state h is needed per step, so the expert logits cost one (1, C) @ (C, N)
matmul next to the LM head's (1, C) @ (C, V). Index i < V is a word token, V + k is expert k.
Expert tokens are never fed back: when one wins, the caller hands the answer to that expert.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from etr_hub.models.compat import cache_kwarg
from etr_hub.routing.math import routable_logits

NEG_INF = float("-inf")
MIN_TEMPERATURE = 1e-4  # below this, sampling is greedy: logits / 1e-300 overflow to inf and NaN


# -- the sampler: small pure functions ----------------------------------------------------------
def next_token_logits(
    word: torch.Tensor, expert: torch.Tensor | None, blocked: torch.Tensor | None = None
) -> torch.Tensor:
    """[W_V h; W_E h] for one position, with blocked and non-finite experts at -inf."""
    word = word.reshape(-1)  # (V,)
    if expert is None or expert.numel() == 0:
        return word
    expert = routable_logits(expert.reshape(-1).to(word.dtype))  # (N,)
    if blocked is not None:
        expert = expert.masked_fill(blocked, NEG_INF)  # (N,)
    return torch.cat([word, expert])  # (V + N,)


def penalize(
    logits: torch.Tensor,
    counts: Counter[int],
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
) -> torch.Tensor:
    """Logits of the tokens already in the answer (`counts`: id -> times), lowered.

    repetition_penalty p (transformers'/vLLM's): a seen token's logit l becomes l / p if l > 0
    else l * p. presence/frequency (OpenAI's): l - presence - frequency * count."""
    if not counts or (repetition_penalty == 1.0 and presence_penalty == 0.0 and frequency_penalty == 0.0):
        return logits
    ids = torch.tensor(list(counts), dtype=torch.long)  # (S,)
    times = torch.tensor(list(counts.values()), dtype=logits.dtype)  # (S,)
    seen = logits[ids]  # (S,)
    if repetition_penalty != 1.0:
        seen = torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
    seen = seen - frequency_penalty * times - presence_penalty
    return logits.index_put((ids,), seen)  # a copy: the caller's logits stay eq. 1's


def sample_index(
    logits: torch.Tensor, *, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> int:
    """Greedy when temperature is (about) 0, else temperature + nucleus (top-p) sampling. Logits
    the model made NaN never win, and a distribution that is not finite falls back to greedy."""
    logits = torch.nan_to_num(logits.float(), nan=NEG_INF)  # (V + N,)
    if temperature < MIN_TEMPERATURE:
        return int(logits.argmax())
    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)  # (V + N,) the max maps to 0: no overflow
    if not bool(probs.isfinite().all()) or not float(probs.sum()) > 0:
        return int(logits.argmax())
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)  # (V + N,), (V + N,)
        before = sorted_p.cumsum(-1) - sorted_p  # (V + N,) mass strictly before each token
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)  # keep the smallest set reaching top_p
        return int(order[torch.multinomial(sorted_p, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def token_probability(logits: torch.Tensor, index: int) -> float:
    """softmax(logits)[index], computed stably (eq. 1, untempered)."""
    logits = logits.float()  # (V + N,)
    return float(torch.exp(logits[index] - torch.logsumexp(logits, dim=-1)))


# -- a frozen causal LM decoding one sequence with a KV cache ---------------------------------
class CausalRunner:
    """Prefill once, then one token per step; returns the last position's hidden state.

    `ids` are the tokens whose keys/values are in the cache, so a later sequence that shares a
    prefix with them can `rewind` to it and feed only the rest (a prefix cache).
    """

    def __init__(self, model: Any, keep_layer: int | None = None):
        self.model = model
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
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
        x = torch.tensor([list(ids)], dtype=torch.long)  # (1, T)
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


@dataclass
class Sampling:
    """How the next token is chosen, and the answer's tokens so far (what the penalties see)."""

    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    counts: Counter[int] = field(default_factory=Counter)

    @classmethod
    def make(
        cls,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        *,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        answer: Iterable[int] = (),
    ) -> Sampling:
        """`answer`: tokens already in this answer (e.g. the meta model's, before an expert took over)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return cls(
            float(temperature),
            float(top_p),
            gen,
            float(repetition_penalty),
            float(presence_penalty),
            float(frequency_penalty),
            Counter(answer),
        )

    def pick(self, logits: torch.Tensor) -> int:
        logits = penalize(logits, self.counts, self.repetition_penalty, self.presence_penalty, self.frequency_penalty)
        return sample_index(logits, temperature=self.temperature, top_p=self.top_p, generator=self.generator)

    def observe(self, ids: Iterable[int]) -> None:
        """Count tokens that joined the answer."""
        self.counts.update(ids)


class RoutedDecoder:
    """The meta model's side of Algorithm 1. `next()` returns a word id (< V) or V + expert index.

    A sampled word token is fed lazily at the next call, so the last token costs no forward
    pass and an expert choice leaves h (and the cache) exactly where the expert token arose.
    """

    def __init__(
        self,
        model: Any,
        w_e_t: torch.Tensor | None,
        sampling: Sampling,
        route_window: int | None = 1,
        keep_layer: int | None = None,
    ):
        self.runner = CausalRunner(model, keep_layer)  # keep_layer: for LoRA experts to continue its cache
        # Expert tokens compete only at the first `route_window` positions of the answer: that is
        # where their rows were trained (eq. 4, the routing position); elsewhere their logits are
        # uncalibrated and fire spuriously. None lets them compete at every step (Algorithm 1 as is).
        self.route_window = route_window
        self.steps = 0
        self.w_e_t = w_e_t if w_e_t is not None and w_e_t.numel() else None  # (C, N)
        self.n_experts = 0 if self.w_e_t is None else int(self.w_e_t.shape[1])
        self.blocked: torch.Tensor | None = None  # (N,) bool: experts that failed in this answer
        self.unroutable: set[int] = set()  # experts whose logit was NaN/Inf (never routed; reported once)
        self._unreported: list[int] = []
        self.sampling = sampling
        self.h: torch.Tensor | None = None
        self.pending: list[int] = []
        self.logits: torch.Tensor | None = None
        self.vocab = 0

    @torch.inference_mode()
    def start(self, prompt_ids: Sequence[int]) -> None:
        self.h = self.runner.feed(prompt_ids)  # (1, C)

    @torch.inference_mode()
    def next(self) -> int:
        if self.pending:
            self.h = self.runner.feed(self.pending)  # (1, C)
            self.pending = []
        h = self.h
        word = self.runner.word_logits(h)  # (1, V)
        routing = self.w_e_t is not None and (self.route_window is None or self.steps < self.route_window)
        self.steps += 1
        expert = h @ self.w_e_t if routing else None  # (1, C) @ (C, N) -> (1, N)
        if expert is not None and not bool(torch.isfinite(expert).all()):
            bad = set(torch.nonzero(~torch.isfinite(expert.reshape(-1))).reshape(-1).tolist()) - self.unroutable
            self.unroutable |= bad
            self._unreported += sorted(bad)
        self.vocab = word.shape[-1]
        self.logits = next_token_logits(word, expert, self.blocked)  # (V + N,)
        index = self.sampling.pick(self.logits)
        if index < self.vocab:
            self.pending = [index]
            self.sampling.observe(self.pending)
        return index

    def take_unroutable(self) -> list[int]:
        """Experts newly found non-finite since the last call (to warn about once)."""
        found, self._unreported = self._unreported, []
        return found

    def probability(self, index: int) -> float:
        assert self.logits is not None
        return token_probability(self.logits, index)

    def block(self, expert: int) -> None:
        """Never pick this expert again in this answer (it failed)."""
        if self.blocked is None:
            self.blocked = torch.zeros(self.n_experts, dtype=torch.bool)
        self.blocked[expert] = True

    def extend(self, ids: Sequence[int]) -> None:
        """Add tokens the meta model did not sample (an expert's text after a failure)."""
        self.pending.extend(ids)
        self.sampling.observe(ids)


@torch.inference_mode()
def _prefill(runner: CausalRunner, ids: Sequence[int]) -> torch.Tensor:
    return runner.feed(ids)


def plain_tokens(
    model: Any,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    sampling: Sampling,
    eos_ids: frozenset[int],
    runner: CausalRunner | None = None,
    donor: CausalRunner | None = None,
) -> Iterator[int]:
    """Unrouted KV-cached decoding (experts, raw completions). Yields token ids; stops after an
    eos id (which is yielded, so callers can tell "stop" from "length"). A `runner` whose cache
    holds an earlier sequence is reused for the prefix it shares with `prompt_ids`; a `donor`
    (the meta runner, for a LoRA expert on its upper layers) for what the meta model encoded."""
    runner = runner or CausalRunner(model)
    rest = runner.rewind(prompt_ids)
    h = None
    if donor is not None:
        from etr_hub.runtime.shared_prefix import feed_from_donor

        h, rest = feed_from_donor(runner, donor, rest)  # (1, C) or None
    if rest:
        h = _prefill(runner, rest)  # (1, C)
    for step in range(max_new_tokens):
        token = _pick(runner, h, sampling)
        sampling.observe([token])
        yield token
        if token in eos_ids or step == max_new_tokens - 1:
            return
        h = _step(runner, token)


@torch.inference_mode()
def _pick(runner: CausalRunner, h: torch.Tensor, sampling: Sampling) -> int:
    return sampling.pick(runner.word_logits(h).reshape(-1))  # (V,)


@torch.inference_mode()
def _step(runner: CausalRunner, token: int) -> torch.Tensor:
    return runner.feed([token])


# -- text ---------------------------------------------------------------------------------------
class Detokenizer:
    """Incremental decoding that re-decodes only a short window per token and holds back
    incomplete UTF-8 sequences, so deltas concatenate to the full decoded text."""

    def __init__(self, tokenizer: Any, context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.ids = list(context)  # a little prompt context gives the first token its spacing
        self.prefix = 0
        self.read = len(self.ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back (e.g. a cut-off multi-byte character) at the end of a turn."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :] if after.startswith(before) else ""


class TextStream:
    """The answer as the user sees it: applies stop strings across deltas and sources.

    Text that could still become a stop string is held back until it cannot.
    """

    def __init__(self, stop: Sequence[str] | None = None):
        self.stops = [s for s in (stop or []) if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.sources: list[tuple[int, str]] = []  # (start offset, source)
        self.emitted = 0
        self.stopped = False

    def push(self, delta: str, source: str) -> list[tuple[str, str]]:
        """Add text from `source`; returns the (text, source) pieces now safe to show."""
        if self.stopped or not delta:
            return []
        if not self.sources or self.sources[-1][1] != source:
            self.sources.append((len(self.text), source))
        start = len(self.text)
        self.text += delta
        ready = len(self.text)
        if self.stops:
            first = min(
                (i for i in (self.text.find(s, max(0, start - self.longest + 1)) for s in self.stops) if i >= 0),
                default=-1,
            )
            if first >= 0:
                self.text, self.stopped, ready = self.text[:first], True, first
            else:
                ready -= self._held_back()
        return self._emit(ready)

    def finish(self) -> list[tuple[str, str]]:
        return self._emit(len(self.text))

    def _held_back(self) -> int:
        for k in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def _emit(self, ready: int) -> list[tuple[str, str]]:
        pieces = []
        while self.emitted < ready:
            idx = max(i for i, (start, _) in enumerate(self.sources) if start <= self.emitted)
            end = self.sources[idx + 1][0] if idx + 1 < len(self.sources) else len(self.text)
            end = min(end, ready)
            pieces.append((self.text[self.emitted : end], self.sources[idx][1]))
            self.emitted = end
        return pieces

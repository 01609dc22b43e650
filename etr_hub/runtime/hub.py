"""`Hub`: the frozen meta model + W_E from the registry + lazily loaded experts, as one assistant.

Algorithm 1 of arXiv 2403.16854, with two changes the paper's code lacks: the meta model's
partial answer is kept (the expert continues the open assistant turn, in its own chat
template), and an expert that cannot load or answer never loses the answer — the meta model
finishes it, the route record says `fell_back`, and the caller gets a one-line warning.
A Hub is not thread-safe; serialise calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Unpack

import torch

from etr_hub.backends import meta_layer_to_keep
from etr_hub.backends.base import Handoff
from etr_hub.backends.health import DEFAULT_COOLDOWN_S, DEFAULT_FAILURES_BEFORE_COOLDOWN, HealthPolicy
from etr_hub.backends.pool import ExpertPool
from etr_hub.errors import EtrHubError
from etr_hub.generation.modelinfo import context_limit, eos_ids, sampling_defaults
from etr_hub.generation.runner import CausalRunner
from etr_hub.models.chat import routing_prompt_ids, to_ids
from etr_hub.models.fingerprint import meta_fingerprint, output_embedding
from etr_hub.models.loading import load_causal_lm
from etr_hub.models.refs import ModelRef
from etr_hub.registry import Registry
from etr_hub.routing.math import max_row_norm, routable_logits
from etr_hub.runtime.answer import answer
from etr_hub.runtime.assembly import assemble
from etr_hub.runtime.options import (
    DEFAULT_MAX_NEW_TOKENS,
    EXPERT_SAMPLING,
    Messages,
    RequestSettings,
    check_messages,
    check_prompt,
)
from etr_hub.runtime.options import Options as _Options
from etr_hub.runtime.types import ChatResult, Done, Event, ExpertScore, Explanation, WordScore

FALLBACKS = ("meta", "next-expert")


class Hub:
    def __init__(
        self, registry: Any, meta: Any, meta_row: Any, assembly: Any, pool: Any, status: Callable[[str], None] | None
    ):
        self.registry = registry
        self.meta = meta  # LoadedModel
        self.meta_name: str = meta_row.display
        self.experts = assembly.experts
        self.skipped: list[tuple[str, str]] = assembly.skipped
        self.pool = pool
        self.status = status
        device = meta.model.get_input_embeddings().weight.device
        # (C, N): W_E transposed, one matmul per step; float32 on the meta model's device (decode.py says why)
        self.w_e_t = assembly.w_e.float().T.contiguous().to(device)
        self.bias: torch.Tensor = assembly.bias.to(
            device
        )  # (N,) the operator's calibration, added to the expert logits
        self.min_p: float = float(meta_row.min_p)  # an expert token needs p >= min_p to take over
        self.fallback = "meta"  # a cooling expert's question: the meta model's, or "next-expert"
        self.eos = eos_ids(meta.model, meta.tokenizer)
        self.context = context_limit(meta.model, meta.tokenizer)
        self.sampling = sampling_defaults(meta.model)  # what None means for temperature, top_p, repetition_penalty
        self.route_window: int | None = 1
        self.keep_layer: int | None = None  # decoder layer whose input the meta runner keeps (LoRA experts)
        self.decode: Any = None  # the meta model's part of an answer: None in this process (a router's: the engine)

    @classmethod
    def open(
        cls,
        registry: Any = None,
        *,
        status: Callable[[str], None] | None = None,
        memory_budget_mb: int | None = None,
        meta: Any = None,
        route_window: int | None = 1,
        failures_before_cooldown: int = DEFAULT_FAILURES_BEFORE_COOLDOWN,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        min_p: float | None = None,
        fallback: str = "meta",
        device: str | None = None,
        dtype: str | None = None,
        meta_url: str | None = None,
        meta_model: str | None = None,
        meta_export: Any = None,
    ) -> Hub:
        """Load the registry's meta model (or use `meta`, an already loaded LoadedModel of it) and
        assemble W_E from the enabled experts that fit it.

        `route_window`: expert tokens compete at the first N positions of an answer (1: the
        routing position their rows were trained at); None: at every position.
        `failures_before_cooldown` / `cooldown_s`: a remote expert that fails that many times in a
        row is out of routing for that long, then probed (backends/health.py).
        `min_p`: the minimum probability an expert token needs to take over (None: the registry's,
        set by `etr-hub expert tune --min-p`).
        `fallback`: who takes a question whose expert is cooling down: "meta" (the meta model) or
        "next-expert" (the next-best token, which may be another expert).
        `device` / `dtype`: where the meta model loads (models/device.py; None: ETR_HUB_DEVICE /
        ETR_HUB_DTYPE, else auto); its experts and W_E follow it. A given `meta` stays where it is.
        `meta_url` (with `meta_export`, the folder `etr-hub export meta` wrote, and optionally
        `meta_model`): a router holding no weights, the meta model served by an OpenAI-compatible
        engine at that URL (RouterHub, runtime/engine.py)."""
        health = HealthPolicy(failures_before_cooldown, cooldown_s).check()
        check_routing_options(min_p, fallback)
        registry = registry or Registry.open()
        if meta_url is not None:
            check_uncalibrated(registry, min_p)
            router = RouterHub.connect(
                registry, meta_url, meta_model, meta_export, status, memory_budget_mb, route_window, health
            )
            router.fallback = fallback
            return router
        meta_row = registry.require_meta()
        meta, fingerprint = _checked_meta(meta_row, meta, device, dtype, status)
        w_v = output_embedding(meta.model)  # (V, C)
        hidden = int(w_v.shape[1])
        if status is not None:
            status("assembling expert tokens")
        assembly = assemble(registry, fingerprint=fingerprint, hidden_size=hidden, max_row_norm=max_row_norm(w_v))
        budget = None if memory_budget_mb is None else int(memory_budget_mb * 2**20)
        pool = ExpertPool(assembly.specs, meta, budget_bytes=budget, status=status, health=health)
        hub = cls(registry, meta, meta_row, assembly, pool, status)
        hub.route_window = route_window
        hub.min_p = hub.min_p if min_p is None else float(min_p)
        hub.fallback = fallback
        hub.keep_layer = meta_layer_to_keep(assembly.specs.values())
        return hub

    def close(self) -> None:
        self.pool.close()

    # -- public calls ---------------------------------------------------------------------------
    def chat(
        self,
        messages: Messages,
        *,
        stream: bool = False,
        expert: str | None = None,
        **settings: Unpack[RequestSettings],
    ) -> ChatResult | Iterator[Event]:
        """Answer the conversation: routed (expert=None) or by the named expert directly.

        `settings` (all optional, see RequestSettings): temperature / top_p / repetition_penalty
        None is the meta model's recommendation (`self.sampling`); temperature 0 is greedy. The
        penalties count the answer's tokens (the meta model's and the experts'). A conversation
        longer than `max_prompt_tokens` (or the context) loses its oldest turns, then the start of
        the last message."""
        opts = self._options(settings)
        messages = check_messages(messages)
        self.require_expert(expert)
        ids, messages, notes, opts.max_new_tokens = self._fit_chat(
            messages, opts.max_new_tokens, opts.max_prompt_tokens
        )
        handoff = Handoff(messages=messages, meta_tokenizer=self.meta.tokenizer)
        events = answer(self, ids, handoff, opts, expert=expert, routed=expert is None, notes=notes, decode=self.decode)
        return events if stream else _collect(events)

    def complete(
        self,
        prompt: str,
        *,
        stream: bool = False,
        expert: str | None = None,
        **settings: Unpack[RequestSettings],
    ) -> ChatResult | Iterator[Event]:
        """Raw continuation of `prompt` (no chat template, no routing) by the meta model or one expert
        (settings as in `chat`; a prompt over `max_prompt_tokens` keeps its end)."""
        opts = self._options(settings)
        check_prompt(prompt)
        self.require_expert(expert)
        ids = to_ids(self.meta.tokenizer(prompt, add_special_tokens=True))
        ids, notes, opts.max_new_tokens = self._fit_ids(ids, opts.max_new_tokens, "prompt", opts.max_prompt_tokens)
        events = answer(
            self,
            ids,
            Handoff(prompt=prompt, meta_tokenizer=self.meta.tokenizer),
            opts,
            expert=expert,
            routed=False,
            notes=notes,
            decode=self.decode,
        )
        return events if stream else _collect(events)

    def prompt_tokens(self, messages: Messages | None = None, *, prompt: str | None = None) -> int:
        """How many meta-model tokens a conversation (in the chat template) or a raw prompt takes
        (the server checks its limit with it before a request waits for the model)."""
        if prompt is not None:
            return len(to_ids(self.meta.tokenizer(check_prompt(prompt), add_special_tokens=True)))
        return len(routing_prompt_ids(self.meta.tokenizer, check_messages(messages or []))[0])

    def _options(self, settings: RequestSettings) -> _Options:
        """The request's settings, the meta model's recommendation where one is None, checked."""
        unknown = sorted(set(settings) - set(RequestSettings.__annotations__))
        if unknown:
            raise TypeError(f"unexpected setting(s): {', '.join(unknown)}")
        d = self.sampling
        return _Options(
            max_new_tokens=settings.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
            temperature=_or(settings.get("temperature"), d.temperature),
            top_p=_or(settings.get("top_p"), d.top_p),
            stop=list(settings.get("stop") or []),
            seed=settings.get("seed"),
            ignore_eos=settings.get("ignore_eos", False),
            repetition_penalty=_or(settings.get("repetition_penalty"), d.repetition_penalty),
            presence_penalty=settings.get("presence_penalty", 0.0),
            frequency_penalty=settings.get("frequency_penalty", 0.0),
            max_prompt_tokens=settings.get("max_prompt_tokens"),
            explicit=frozenset(k for k in EXPERT_SAMPLING if settings.get(k) is not None),
        ).check()

    def explain(self, text: str, *, top: int = 10) -> Explanation:
        """At the routing position of `text` (as one user message): every expert token's
        probability next to the top-K word tokens, and which would win."""
        messages = check_messages(text)
        ids, _ = routing_prompt_ids(self.meta.tokenizer, messages)
        ids = ids[-self.context :]
        runner = CausalRunner(self.meta.model)
        with torch.inference_mode():
            h = runner.feed(ids)  # (1, C)
            word = runner.word_logits(h).reshape(-1).float()  # (V,)
            raw = (h.float() @ self.w_e_t).reshape(-1)  # (N,)
        bias = self.bias.to(raw.device)  # (N,)
        p_word, p_expert, z = eq1_probabilities(word, raw, bias)  # (V,), (N,), (N,) calibrated
        _, p_raw, _ = eq1_probabilities(word, raw, torch.zeros_like(bias))  # (N,) as the provider trained it
        experts = sorted(
            (
                ExpertScore(
                    e.name, float(p_expert[k]), float(z[k]), float(p_raw[k]), float(raw[k]), float(self.bias[k])
                )
                for k, e in enumerate(self.experts)
            ),
            key=lambda s: -s.probability,
        )
        values, order = p_word.topk(max(0, min(top, word.numel())))
        words = [
            WordScore(self.meta.tokenizer.decode([int(i)]), int(i), float(v), float(word[i]))
            for v, i in zip(values, order)
        ]
        best = experts[0] if experts else None
        wins = best is not None and best.logit > float(word.max()) and best.probability >= self.min_p
        winner = best.name if best is not None and wins else None
        return Explanation(text, len(ids) - 1, experts, words, winner, float(p_expert.sum()), self.min_p)

    # -- inputs ---------------------------------------------------------------------------------
    def require_expert(self, expert: str | None) -> None:
        if expert is not None and expert not in {e.name for e in self.experts}:
            known = ", ".join(e.name for e in self.experts) or "none"
            why = dict(self.skipped).get(expert)
            raise EtrHubError(
                f"expert '{expert}' is not available" + (f" (skipped: {why})" if why else ""), f"use one of: {known}"
            )

    def _fit_chat(
        self, messages: list[dict], max_new: int, max_prompt: int | None = None
    ) -> tuple[list[int], list[dict], list[str], int]:
        """Prompt ids that leave room for the answer (and stay within `max_prompt`): drop the
        oldest turns, then cut the last message from the left, and say so."""
        tokenizer = self.meta.tokenizer
        room = max(self.context - max_new, self.context // 2)
        limit = f"the meta model's context of {self.context} tokens with room for the answer"
        if max_prompt is not None and max_prompt < room:
            room, limit = max_prompt, f"the prompt limit of {max_prompt} tokens"
        ids, _ = routing_prompt_ids(tokenizer, messages)
        original, dropped, cut = len(ids), 0, 0
        while len(ids) > room:
            older = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"]
            if older:
                del messages[older[0]]
                dropped += 1
            else:
                content = to_ids(tokenizer(messages[-1]["content"], add_special_tokens=False))
                excess = len(ids) - room + 2  # +2: re-tokenising the cut text can merge differently
                if excess >= len(content):
                    raise EtrHubError(
                        f"the system prompt alone ({len(ids) - len(content)} tokens) leaves no room within {limit}",
                        "shorten the system prompt, or lower `max_new_tokens` or raise `max_prompt_tokens`",
                    )
                messages[-1] = {**messages[-1], "content": tokenizer.decode(content[excess:], skip_special_tokens=True)}
                cut += excess
            ids, _ = routing_prompt_ids(tokenizer, messages)
        notes = []
        if dropped or cut:
            what = ", ".join(
                x
                for x in (
                    f"dropped the {dropped} oldest message(s)" if dropped else "",
                    f"kept only the end of the last message ({cut} tokens cut)" if cut else "",
                )
                if x
            )
            notes.append(f"the conversation ({original} tokens) did not fit {limit}; {what}")
        return ids, messages, notes, min(max_new, self.context - len(ids))

    def _fit_ids(
        self, ids: list[int], max_new: int, what: str, max_prompt: int | None = None
    ) -> tuple[list[int], list[str], int]:
        room = max(self.context - max_new, self.context // 2)
        limit = f"the meta model's context of {self.context}"
        if max_prompt is not None and max_prompt < room:
            room, limit = max_prompt, f"the prompt limit of {max_prompt} tokens"
        notes = []
        if len(ids) > room:
            notes.append(f"the {what} ({len(ids)} tokens) did not fit {limit}; kept its last {room} tokens")
            ids = ids[-room:]
        return ids, notes, min(max_new, self.context - len(ids))


class RouterHub(Hub):
    """`Hub.open(meta_url=…)`: the meta model runs in an engine serving the exported checkpoint; this
    process holds its tokenizer, W_E's names and the experts (runtime/router.py). Several answers
    run at once (`parallel`, the server's worker threads): the engine batches them."""

    parallel = 64

    def __init__(self, registry: Any, engine: Any, meta: Any, assembly: Any, pool: Any, export: Any, status: Any):
        from etr_hub.runtime.router import engine_decoding

        self.registry, self.engine, self.meta, self.pool, self.status = registry, engine, meta, pool, status
        self.meta_name = f"{engine.model} at {engine.where.removeprefix('the meta engine at ')}"
        self.experts, self.skipped = assembly.experts, assembly.skipped
        self.w_e_t = torch.zeros(int(assembly.w_e.shape[1]), 0)  # (C, 0): the rows live in the engine
        ids = {e["name"]: int(e["token_id"]) for e in export.manifest["experts"]}
        self.expert_tokens = {f"<|expert:{e.name}|>": k for k, e in enumerate(self.experts)}  # text -> k
        self.expert_token_ids = sorted(ids.values())
        self.eos, self.context, self.sampling = frozenset(), export.context, export.sampling
        self.route_window, self.keep_layer, self.decode = 1, None, engine_decoding
        self.bias, self.min_p, self.fallback = torch.zeros(len(self.experts)), 0.0, "meta"  # check_uncalibrated

    @classmethod
    def connect(
        cls, registry: Any, url: str, model: Any, folder: Any, status: Any, budget_mb: Any, window: Any, health: Any
    ) -> RouterHub:
        from etr_hub.runtime.engine import MetaEngine, check_export, read_router_export
        from etr_hub.runtime.router import LazyMeta, LockedPool

        meta_row = registry.require_meta()
        export = read_router_export(folder)
        assembly = assemble(registry, fingerprint=meta_row.fingerprint, hidden_size=meta_row.hidden_size)
        sha = {e.name: e.token_sha256 for e in registry.list_experts(enabled_only=True)}
        routed = [(e.name, e.version, sha[e.name]) for e in assembly.experts]
        check_export(export.manifest, meta_row.fingerprint, routed)
        engine = MetaEngine(url, model)
        try:
            if status is not None:
                status(f"checking {engine.where}")
            engine.check_model()
            engine.check_tokens([f"<|expert:{e.name}|>" for e in assembly.experts])
        except BaseException:
            engine.close()
            raise
        meta = LazyMeta(export.tokenizer, lambda: Hub.open(registry, status=status).meta)
        budget = None if budget_mb is None else int(budget_mb * 2**20)
        pool = ExpertPool(assembly.specs, meta, budget_bytes=budget, status=status, health=health)
        hub = cls(registry, engine, meta, assembly, LockedPool(pool), export, status)
        hub.route_window = window
        return hub

    def close(self) -> None:
        self.pool.close()
        self.engine.close()

    def explain(self, text: str, *, top: int = 10) -> Explanation:
        raise EtrHubError(
            "explain needs the meta model's hidden states, which an engine does not expose",
            "run `etr-hub explain` on a hub that loads the meta model (without `meta_url`)",
        )


def _checked_meta(meta_row: Any, meta: Any, device: str | None, dtype: str | None, status: Any) -> tuple[Any, str]:
    """The registry's meta model (loaded unless given) and its fingerprint, which must be the recorded one."""
    if meta is None:
        ref = ModelRef.model_validate(meta_row.reference)  # device and dtype are checked before it loads
        meta = load_causal_lm(ref, device=device, dtype=dtype, status=status, role="meta", fingerprint=True)
    fingerprint = meta.fingerprint or meta_fingerprint(meta.model)
    if fingerprint != meta_row.fingerprint:
        raise EtrHubError(
            f"the meta model at {meta_row.display} is not the one the registry recorded (fingerprint changed)",
            "re-run `etr-hub init --meta REF` with the original model, or retrain the experts",
        )
    return meta, fingerprint


def _collect(events: Iterator[Event]) -> ChatResult:
    for event in events:
        if isinstance(event, Done):
            return event.result
    raise RuntimeError("the answer ended without a result")  # unreachable: _answer always ends with Done


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def eq1_probabilities(
    word: torch.Tensor, raw: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """softmax([W_V h; W_E h + b]) split into words (V,) and experts (N,), with the calibrated logits
    (N,); a non-finite expert logit is -inf (never routes), as in decoding."""
    z = routable_logits(raw + bias.float())  # (N,)
    lse = torch.logsumexp(torch.cat([word, z]), dim=-1)  # ()
    return torch.exp(word - lse), torch.exp(z - lse), z


def check_routing_options(min_p: float | None, fallback: str) -> None:
    import math

    if min_p is not None and not (math.isfinite(min_p) and 0 <= min_p <= 1):
        raise EtrHubError(f"`min_p` must be a probability between 0 and 1 (got {min_p:g})", "pass e.g. `min_p=0.3`")
    if fallback not in FALLBACKS:
        raise EtrHubError(
            f"`fallback` must be one of {', '.join(FALLBACKS)} (got {fallback!r})", "pass `fallback=meta`"
        )


def check_uncalibrated(registry: Any, min_p: float | None) -> None:
    """A router cannot apply the operator's calibration: the engine picks the token from its own logits
    (no per-expert bias, no probabilities to hold against min_p). Refuse rather than route otherwise."""
    meta_min_p = registry.require_meta().min_p if min_p is None else min_p
    biased = [f"{e.name} {e.bias:+g}" for e in registry.list_experts(enabled_only=True) if e.bias]
    if biased or meta_min_p:
        what = ", ".join([*(f"bias on {b}" for b in biased), *([f"min_p {meta_min_p:g}"] if meta_min_p else [])])
        raise EtrHubError(
            f"the registry's routing calibration ({what}) cannot be applied by a router in front of an engine",
            "reset it (`etr-hub expert tune NAME --bias 0`, `etr-hub expert tune --min-p 0`), "
            "or serve without `meta_url`",
        )

"""One answer: Algorithm 1's loop (arXiv 2403.16854) with hand-over and fallback.

The meta model decodes (routed or not); when an expert token wins, the answer so far is handed
to that expert, which continues it. An expert that cannot load or answer never loses the answer:
the meta model finishes it, the route record says `fell_back`, and the caller gets a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch

from etr_hub.backends.base import Chunk, ExpertError, GenSettings, Handoff
from etr_hub.backends.pool import ExpertPool
from etr_hub.generation.sampling import Sampling
from etr_hub.generation.text import Detokenizer, TextStream
from etr_hub.models.chat import to_ids
from etr_hub.runtime.decode import RoutedDecoder
from etr_hub.runtime.options import Options, expert_sampling
from etr_hub.runtime.types import (
    ChatResult,
    Done,
    Event,
    ExpertInfo,
    FinishReason,
    RouteSwitch,
    RouteWarning,
    Switch,
    TextDelta,
)

DETOK_CONTEXT = 4  # prompt tokens the detokeniser sees first, so the first word gets its spacing


class HubParts(Protocol):
    """What an answer reads from the Hub (runtime/hub.py)."""

    meta: Any  # LoadedModel: .model, .tokenizer
    w_e_t: torch.Tensor  # (C, N): W_E transposed
    experts: list[ExpertInfo]  # row k of W_E is experts[k]'s token
    eos: frozenset[int]
    route_window: int | None
    keep_layer: int | None
    pool: ExpertPool
    bias: torch.Tensor  # (N,) the operator's calibration on the expert logits
    min_p: float
    fallback: str  # a cooling expert's question: "meta" (the meta model answers) or "next-expert"


@dataclass
class ExpertTurn:
    """What one expert wrote (or managed to write before it failed)."""

    ok: bool = False
    tokens: int = 0
    finish: str | None = None
    text: str = ""

    def add(self, chunk: Chunk) -> None:
        self.tokens += chunk.tokens
        self.text += chunk.text
        self.finish = chunk.finish or self.finish


@dataclass
class Answer:
    """The answer being written: its meta-model token ids, the text shown, the tokens spent."""

    hub: HubParts
    prompt_ids: list[int]
    handoff: Handoff
    opts: Options
    result: ChatResult
    stream: TextStream
    used: int = 0  # completion tokens, the experts' included
    answer_ids: list[int] = field(default_factory=list)  # the answer as meta-model token ids
    finish: str | None = None
    detok: Detokenizer = field(init=False)  # the meta model's text since the last hand-over

    def __post_init__(self) -> None:
        self.new_detokenizer()

    def warning(self, message: str) -> RouteWarning:
        self.result.warnings.append(message)
        return RouteWarning(message)

    def deltas(self, text: str, source: str) -> Iterator[TextDelta]:
        for piece, src in self.stream.push(text, source):
            yield TextDelta(piece, src)

    def meta_ids(self, text: str) -> list[int]:
        return to_ids(self.hub.meta.tokenizer(text, add_special_tokens=False))

    def new_detokenizer(self) -> None:
        """Detokenise from here on, after the answer so far (context gives the first word its spacing)."""
        self.detok = Detokenizer(self.hub.meta.tokenizer, (self.prompt_ids + self.answer_ids)[-DETOK_CONTEXT:])


def answer(
    hub: HubParts,
    prompt_ids: list[int],
    handoff: Handoff,
    opts: Options,
    *,
    expert: str | None,
    routed: bool,
    notes: list[str],
    decode: Callable[[Answer, bool], Iterator[Event]] | None = None,
) -> Iterator[Event]:
    """The answer's events, ending with Done: `expert` (if named) writes first, then the meta model
    decodes, handing over to an expert whose token wins (when `routed`). `decode`: the meta model's
    part (default meta_decoding, in this process; a router's runs in an engine, runtime/router.py)."""
    ans = Answer(
        hub, prompt_ids, handoff, opts, ChatResult("", None, prompt_tokens=len(prompt_ids)), TextStream(opts.stop)
    )
    for note in notes:
        yield ans.warning(note)
    if expert is not None:
        yield from requested_expert(ans, expert)
    if ans.finish is None:
        yield from (decode or meta_decoding)(ans, routed)
    for piece, source in ans.stream.finish():
        yield TextDelta(piece, source)
    ans.result.text, ans.result.completion_tokens = ans.stream.text, ans.used
    ans.result.finish_reason = cast(FinishReason, ans.finish)  # set by now; an expert's own reason passes through
    yield Done(ans.result)


def requested_expert(ans: Answer, name: str) -> Iterator[Event]:
    """The caller named the expert: it answers from the start; if it fails, the meta model continues."""
    ans.handoff.meta_ids = list(ans.prompt_ids)
    turn = yield from run_expert(ans, name, RouteSwitch(name, 0, 1.0, reason="requested"), ans.opts.max_new_tokens)
    ans.used += turn.tokens
    if turn.ok:
        ans.finish = turn.finish
    elif turn.text:  # the meta model finishes what the expert started
        ans.answer_ids = ans.meta_ids(turn.text)


def meta_decoding(ans: Answer, routed: bool) -> Iterator[Event]:
    """The meta model writes until eos, a stop string, the token budget, or an expert that finishes."""
    hub, opts = ans.hub, ans.opts
    sampling = Sampling.of(opts, answer=ans.answer_ids)
    w_e_t = hub.w_e_t if routed else None
    decoder = RoutedDecoder(
        hub.meta.model,
        w_e_t,
        sampling,
        route_window=hub.route_window,
        keep_layer=hub.keep_layer,
        bias=hub.bias,
        min_p=hub.min_p,
    )
    ans.new_detokenizer()  # after the requested expert's text, if it wrote some
    cooling = hub.pool.cooling_down() if routed else {}
    decoder.cooled_to_meta = hub.fallback == "meta"
    for k, info in enumerate(hub.experts):
        if info.name in cooling:
            decoder.cool(k)
    decoder.start(ans.prompt_ids + ans.answer_ids)
    while ans.finish is None:
        if ans.used >= opts.max_new_tokens:
            ans.finish = "length"
            break
        index = decoder.next()
        yield from unroutable_warnings(ans, decoder)
        for k in decoder.take_cooled_winners():
            yield ans.warning(f"{cooling[hub.experts[k].name]}; it was left out of routing")
        if index >= decoder.vocab:  # an expert token: hand the answer over (never fed back)
            yield from hand_over(ans, decoder, index)
        elif index in hub.eos and not opts.ignore_eos:
            ans.finish = "stop"
        else:
            ans.used += 1
            ans.answer_ids.append(index)
            yield from ans.deltas(ans.detok.push(index), "meta")
            if ans.stream.stopped:
                ans.finish = "stop"
    yield from ans.deltas(ans.detok.flush(), "meta")


def unroutable_warnings(ans: Answer, decoder: RoutedDecoder) -> Iterator[RouteWarning]:
    for k in decoder.take_unroutable():
        yield ans.warning(
            f"expert '{ans.hub.experts[k].name}' gave a non-finite logit (its token row overflows) "
            "and was not routed to; the meta model answers"
        )


def hand_over(ans: Answer, decoder: RoutedDecoder, index: int) -> Iterator[Event]:
    """Expert `index - V` won: it continues the open turn. If it fails, it is blocked for the rest
    of this answer and the meta model continues after whatever text it wrote."""
    yield from ans.deltas(ans.detok.flush(), "meta")
    k = index - decoder.vocab
    switch = RouteSwitch(ans.hub.experts[k].name, len(ans.answer_ids), decoder.probability(index))
    handoff = ans.handoff
    handoff.partial, handoff.meta_ids = ans.stream.text, ans.prompt_ids + ans.answer_ids
    handoff.answer_ids = list(ans.answer_ids)
    handoff.meta_runner = decoder.runner  # holds exactly meta_ids: a LoRA expert may continue it
    turn = yield from run_expert(ans, switch.expert, switch, ans.opts.max_new_tokens - ans.used)
    ans.used += turn.tokens
    if turn.ok:
        ans.finish = turn.finish
        return
    decoder.block(k)
    if turn.text:
        extra = ans.meta_ids(turn.text)
        decoder.extend(extra)
        ans.answer_ids += extra
        ans.new_detokenizer()
    if ans.stream.stopped:
        ans.finish = "stop"


def run_expert(ans: Answer, name: str, switch: RouteSwitch, budget: int) -> Generator[Event, None, ExpertTurn]:
    """Let `name` continue the answer within `budget` tokens; returns its ExpertTurn. A failure
    becomes a fallback: the expert is forgotten for a while and the switch says why."""
    ans.result.route.append(switch)
    yield Switch(switch)
    turn = ExpertTurn()
    try:
        yield from stream_expert(ans, name, budget, turn)
    except Exception as exc:
        error = (
            exc if isinstance(exc, ExpertError) else ExpertError(f"expert '{name}' failed: {type(exc).__name__}: {exc}")
        )
        ans.hub.pool.forget(name, error)
        switch.fell_back, switch.reason = True, error.problem
        if turn.text:
            ans.result.expert = name
        yield ans.warning(f"expert '{name}' failed ({error.problem}); the meta model finished the answer")
        return turn
    ans.result.expert, turn.ok = name, True
    ans.hub.pool.succeeded(name)
    turn.finish = expert_finish(turn, budget, ans.stream.stopped)
    return turn


def stream_expert(ans: Answer, name: str, budget: int, turn: ExpertTurn) -> Iterator[Event]:
    """The expert's chunks as text deltas, gathered into `turn` as they come (it may fail midway)."""
    o = ans.opts
    declared = next((e.sampling for e in ans.hub.experts if e.name == name), {})
    s = expert_sampling(o, declared)  # the caller's settings, else the bundle's, else the meta model's
    settings = GenSettings(
        budget,
        s["temperature"],
        s["top_p"],
        o.seed,
        o.stop,
        o.ignore_eos,
        s["repetition_penalty"],
        o.presence_penalty,
        o.frequency_penalty,
    )
    chunks = ans.hub.pool.get(name).generate(ans.handoff, settings)
    try:
        for chunk in chunks:
            turn.add(chunk)
            yield from ans.deltas(chunk.text, name)
            if ans.stream.stopped or turn.tokens > budget:  # a server ignoring max_tokens
                break
    finally:
        close = getattr(chunks, "close", None)  # a generator: let it clean up (a plug-in may return any iterator)
        if close is not None:
            close()


def expert_finish(turn: ExpertTurn, budget: int, stopped: bool) -> str:
    """Why the expert's part ended: a stop string, the budget, or what the expert said (else "stop")."""
    if stopped:
        return "stop"
    if turn.finish is None or turn.tokens >= budget:
        return "length" if turn.tokens >= budget else "stop"
    return turn.finish

"""The answer loop of a router (`Hub.open(meta_url=…)`): the meta model decodes in an engine.

At the routing position the router reads which token the engine's meta model emits. The exported
checkpoint's expert tokens arrive as text (`<|expert:NAME|>`, runtime/export.py), so the router
splits the stream into word text and expert tokens (`ExpertTokenReader`). An expert token within
the routing window (the first `route_window` tokens) hands the open assistant turn to that expert,
local or remote, exactly as in-process (answer.py's run_expert: fallbacks and the route record
included); the engine's stream is closed, so the engine stops. After the window an expert token is
not a route: the router cuts the stream there and the meta model continues the turn with every
expert token suppressed (`logit_bias` −100 on /v1/completions); an engine that ignores logit_bias
ends the answer there with a warning. An expert that fails hands the turn back the same way.

Several requests run at once (the engine batches them): the pool is used under a lock, and a
local expert answers one request at a time.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Generator, Iterator
from typing import Any

from etr_hub.backends.base import Handoff, render_prompt_text
from etr_hub.backends.remote.backend import MAX_STOPS
from etr_hub.runtime.answer import Answer, run_expert
from etr_hub.runtime.engine import SUPPRESS, EngineError, Piece
from etr_hub.runtime.types import Event, RouteSwitch


class ExpertTokenReader:
    """Streamed text split into word text and expert tokens; text that may still become an expert
    token (a prefix of one, at the end of what arrived) is held back until it cannot."""

    def __init__(self, tokens: dict[str, int]):  # token text -> expert index
        self.tokens = tokens
        self.buffer = ""

    def push(self, text: str) -> list[str | int]:
        """Word text (str) and expert indices (int), in order."""
        self.buffer += text
        out: list[str | int] = []
        while True:
            hits = [(i, t) for t in self.tokens if (i := self.buffer.find(t)) >= 0]
            if not hits:
                break
            at, token = min(hits)
            if at:
                out.append(self.buffer[:at])
            out.append(self.tokens[token])
            self.buffer = self.buffer[at + len(token) :]
        keep = max((n for t in self.tokens for n in range(len(t) - 1, 0, -1) if self.buffer.endswith(t[:n])), default=0)
        if len(self.buffer) > keep:
            out.append(self.buffer[: len(self.buffer) - keep])
            self.buffer = self.buffer[len(self.buffer) - keep :]
        return out

    def flush(self) -> str:
        rest, self.buffer = self.buffer, ""
        return rest


# -- the engine's part of an answer ----------------------------------------------------------------
def engine_decoding(ans: Answer, routed: bool) -> Iterator[Event]:
    """The engine's meta model writes the answer. Routed, with a routing window: a short request of
    `route_window` tokens decides the route, then (no expert token there) the answer is a chat
    completion with every expert token suppressed from its first token — served raw, a small meta
    model emits expert tokens mid-answer, and an engine that ignores logit_bias on /v1/completions
    (transformers serve) could not continue after a cut. Otherwise a continuation."""
    hub: Any = ans.hub  # a RouterHub
    first = routed and ans.handoff.messages is not None and not ans.answer_ids and not ans.stream.text
    if first and hub.route_window is None:  # experts compete at every position: one stream, cut where one wins
        body = {**sampling_body(ans), "messages": ans.handoff.messages, "stream_options": {"include_usage": True}}
        yield from relay(ans, "/chat/completions", body, window=True)
        return
    if first:
        yield from routed_answer(ans)
        return
    yield from continuation(ans)


def routed_answer(ans: Answer) -> Iterator[Event]:
    """The answer request (every expert token suppressed) starts first and the routing request runs while
    it decodes, so the engine batches the two; its text is held until the route is known."""
    hub: Any = ans.hub  # a RouterHub
    bias = {str(i): SUPPRESS for i in hub.expert_token_ids}
    body = {**sampling_body(ans), "messages": ans.handoff.messages, "logit_bias": bias}
    pieces = hub.engine.stream("/chat/completions", body)
    ahead = list(itertools.islice(pieces, 1))  # the request is in the engine now (its first piece read)
    try:
        hit, before = routing_probe(ans)
    except BaseException:
        pieces.close()
        raise
    if hit is None:
        yield from relay(ans, "/chat/completions", body, window=False, pieces=_resumed(ahead, pieces))
        return
    pieces.close()  # the route: the engine stops the meta model's answer
    yield from ans.deltas(before, "meta")  # what came before its token, within the window
    written = ans.meta_ids(before)
    ans.answer_ids += written
    ans.used += len(written)
    yield from engine_hand_over(ans, hit)


def _resumed(ahead: list[Piece], pieces: Generator[Piece]) -> Generator[Piece]:
    """`pieces` after the ones already read; closing it closes the request."""
    try:
        yield from ahead
        yield from pieces
    finally:
        pieces.close()


def routing_probe(ans: Answer) -> tuple[int | None, str]:
    """The first `route_window` tokens of the engine's answer: (expert index, the text before its token) or
    (None, the text); nothing is shown, the answer request writes it again."""
    hub: Any = ans.hub  # a RouterHub
    body = {**sampling_body(ans), "messages": ans.handoff.messages, "max_tokens": hub.route_window}
    reader, before = ExpertTokenReader(hub.expert_tokens), ""
    pieces = hub.engine.stream("/chat/completions", body)
    try:
        for piece in pieces:
            for item in reader.push(piece.text):
                if isinstance(item, int):
                    return item, before
                before += item
    finally:
        pieces.close()  # the engine stops generating
    return None, before + reader.flush()


def continuation(ans: Answer) -> Iterator[Event]:
    """The meta model continues the turn after what is written (an expert's part, or text before a
    cut expert token) through /v1/completions, expert tokens suppressed."""
    hub: Any = ans.hub  # a RouterHub
    handoff = ans.handoff
    handoff.partial = ans.stream.text
    prompt = render_prompt_text(hub.meta.tokenizer, handoff)
    if handoff.prompt is not None:
        prompt += ans.stream.text
    bias = {str(i): SUPPRESS for i in hub.expert_token_ids}
    if handoff.messages is not None and not ans.stream.text:  # nothing written yet: the chat as it is
        body = {**sampling_body(ans), "messages": handoff.messages, "logit_bias": bias}
        yield from relay(ans, "/chat/completions", body, window=False)
    else:
        body = {**sampling_body(ans), "prompt": prompt, "logit_bias": bias}
        yield from relay(ans, "/completions", body, window=False)


def relay(
    ans: Answer, path: str, body: dict[str, Any], *, window: bool, pieces: Generator[Piece] | None = None
) -> Iterator[Event]:
    """Stream the engine's text through (`pieces`: a request already started); act on the first expert
    token (route it, or cut there)."""
    hub: Any = ans.hub  # a RouterHub
    reader = ExpertTokenReader(hub.expert_tokens)
    meta_text, tokens, finish, hit = "", None, None, None
    pieces = pieces if pieces is not None else hub.engine.stream(path, body)
    try:
        for piece in pieces:
            tokens, finish = piece.completion_tokens or tokens, piece.finish or finish
            for item in reader.push(piece.text):
                if isinstance(item, int):
                    hit = item
                    break
                meta_text += item
                yield from ans.deltas(item, "meta")
            if hit is not None or ans.stream.stopped:
                break
    finally:
        pieces.close()  # the engine stops generating
    if hit is None:
        meta_text += (rest := reader.flush())
        yield from ans.deltas(rest, "meta")
    written = ans.meta_ids(meta_text)
    ans.answer_ids += written
    ans.used += len(written) if hit is not None or tokens is None else tokens
    if hit is None:
        ans.finish = "stop" if ans.stream.stopped or finish != "length" else "length"
        return
    if window and (hub.route_window is None or len(written) < hub.route_window):
        yield from engine_hand_over(ans, hit)
    elif window:  # after the routing window an expert token is no route: continue without them
        yield from continuation(ans)
    else:  # a continuation suppresses every expert token: one arriving anyway means logit_bias was ignored
        ans.finish = "stop"
        yield ans.warning(
            f"{hub.engine.where} emitted an expert token despite logit_bias (it ignores logit_bias on "
            "/v1/completions); the answer ends there — serve the meta model with vLLM, SGLang or llama.cpp's server"
        )


def engine_hand_over(ans: Answer, k: int) -> Iterator[Event]:
    """Expert k's token won at the routing position: it continues the open turn; if it fails, the
    meta model finishes after whatever the expert wrote."""
    handoff = ans.handoff
    handoff.partial, handoff.meta_ids = ans.stream.text, ans.prompt_ids + ans.answer_ids
    handoff.answer_ids, handoff.meta_runner = list(ans.answer_ids), None
    name = ans.hub.experts[k].name
    switch = RouteSwitch(name, len(ans.answer_ids), float("nan"))  # engines without logprobs: p unknown (null)
    turn = yield from run_expert(ans, name, switch, ans.opts.max_new_tokens - ans.used)
    ans.used += turn.tokens
    if turn.ok:
        ans.finish = turn.finish
        return
    if turn.text:
        ans.answer_ids += ans.meta_ids(turn.text)
    if ans.stream.stopped:
        ans.finish = "stop"
    elif ans.used >= ans.opts.max_new_tokens:
        ans.finish = "length"
    else:
        yield from continuation(ans)


def sampling_body(ans: Answer) -> dict[str, Any]:
    """The request's own sampling settings, as OpenAI's fields (repetition_penalty, only when it is not
    the exported generation config's, and ignore_eos: vLLM/SGLang's extensions), with the tokens left as max_tokens."""
    o = ans.opts
    body: dict[str, Any] = {"max_tokens": max(1, o.max_new_tokens - ans.used)}
    for name in ("temperature", "top_p"):
        if name in o.explicit:
            body[name] = getattr(o, name)
    hub: Any = ans.hub  # a RouterHub
    if o.repetition_penalty != hub.sampling.repetition_penalty:  # the engine applies the export's own
        body["repetition_penalty"] = o.repetition_penalty
    if o.seed is not None:
        body["seed"] = o.seed
    if o.stop:
        body["stop"] = list(o.stop)[:MAX_STOPS]
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(o, name):
            body[name] = getattr(o, name)
    if o.ignore_eos:
        body["ignore_eos"] = True
    return body


# -- what the router holds instead of the meta model --------------------------------------------------
class LazyMeta:
    """The meta model's tokenizer (from the export); its weights only if a local or LoRA expert needs
    them (loaded once from the registry, checked against its fingerprint)."""

    def __init__(self, tokenizer: Any, load: Any):
        self.tokenizer = tokenizer
        self._load = load
        self._loaded: Any = None  # the LoadedModel, once an expert needs it
        self._lock = threading.Lock()

    @property
    def loaded(self) -> Any:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    @property
    def model(self) -> Any:
        return self.loaded.model

    def __getattr__(self, name: str) -> Any:  # ref, fingerprint…: what a LoRA expert reads of its base
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.loaded, name)


class LockedPool:
    """The expert pool for concurrent requests: its bookkeeping under one lock, and each expert
    that runs in this process answering one request at a time (remote ones answer concurrently)."""

    def __init__(self, pool: Any):
        self.pool = pool
        self._lock = threading.RLock()
        self._expert_locks: dict[str, threading.Lock] = {}

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.pool, name)
        if name in ("forget", "succeeded", "cooling_down", "close"):
            return _locked(value, self._lock)
        return value

    def get(self, name: str) -> Any:
        from etr_hub.backends.remote.backend import RemoteBackend

        with self._lock:
            backend = self.pool.get(name)
            lock = self._expert_locks.setdefault(name, threading.Lock())
        return backend if isinstance(backend, RemoteBackend) else _OneAtATime(backend, lock)


def _locked(method: Any, lock: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return method(*args, **kwargs)

    return call


class _OneAtATime:
    def __init__(self, backend: Any, lock: threading.Lock):
        self.backend, self.lock = backend, lock

    def generate(self, handoff: Handoff, settings: Any) -> Iterator[Any]:
        with self.lock:
            yield from self.backend.generate(handoff, settings)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


__all__ = ["EngineError", "ExpertTokenReader", "LazyMeta", "LockedPool", "Piece", "engine_decoding"]

"""What the runtime hands back: results, route records and stream events (no torch here)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class ExpertInfo:
    """An expert whose token is in W_E (its model loads lazily, on first use)."""

    name: str
    version: str
    backend: str  # the kind of the backend that runs it: "local", "lora", "remote" or a plug-in's
    reference: str  # the expert model, e.g. "peft:/…/adapter (on meta)"
    label: str | None = None
    description: str = ""
    bias: float = 0.0  # the operator's calibration on its routing logit
    sampling: dict[str, float] = field(default_factory=dict)  # its bundle's declared decoding (manifest `sampling`)


@dataclass
class RouteSwitch:
    """The meta model emitted `expert`'s token as its `token_index`-th generated token (0-based)."""

    expert: str
    token_index: int
    probability: float  # p(expert token | h) under eq. 1, untempered
    fell_back: bool = False  # the expert failed; the meta model finished the answer
    reason: str | None = None  # why it fell back (or "requested" when the caller named the expert)

    def to_json(self) -> dict:
        data = asdict(self)
        data["probability"] = _finite(self.probability)
        return data


@dataclass
class ChatResult:
    text: str
    expert: str | None  # the expert that wrote (part of) the answer; None when the meta model answered alone
    route: list[RouteSwitch] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason = "stop"

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "expert": self.expert,
            "route": [r.to_json() for r in self.route],
            "warnings": list(self.warnings),
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            },
            "finish_reason": self.finish_reason,
        }


# -- stream events ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextDelta:
    text: str
    source: str  # "meta" or the expert's name


@dataclass(frozen=True)
class Switch:
    switch: RouteSwitch


@dataclass(frozen=True)
class RouteWarning:
    message: str


@dataclass(frozen=True)
class Done:
    result: ChatResult


Event = TextDelta | Switch | RouteWarning | Done


# -- explain ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpertScore:
    name: str
    probability: float  # calibrated: with the operator's bias in the softmax (what routing uses)
    logit: float  # calibrated: e·h + bias
    raw_probability: float  # the token as its provider trained it (no biases anywhere)
    raw_logit: float  # e·h
    bias: float = 0.0


@dataclass(frozen=True)
class WordScore:
    token: str
    token_id: int
    probability: float
    logit: float


@dataclass
class Explanation:
    """The routing position of one user message: every expert token next to the top word tokens."""

    text: str
    routing_position: int  # index of the last prompt token (where the meta model decides)
    experts: list[ExpertScore]  # all experts, most probable first
    words: list[WordScore]  # the top-K word tokens
    winner: str | None  # the expert that would take over, or None when a word token wins
    p_any_expert: float  # the summed probability of all expert tokens
    min_p: float = 0.0  # an expert token needs at least this probability to take over

    def to_json(self) -> dict:
        scores = ("probability", "logit", "raw_probability", "raw_logit")
        return {
            "text": self.text,
            "routing_position": self.routing_position,
            "winner": self.winner,
            "p_any_expert": _finite(self.p_any_expert),
            "min_p": self.min_p,
            "experts": [{**asdict(e), **{k: _finite(getattr(e, k)) for k in scores}} for e in self.experts],
            "words": [
                {**asdict(w), "probability": _finite(w.probability), "logit": _finite(w.logit)} for w in self.words
            ],
        }


def _finite(x: float) -> float | None:
    """JSON has no NaN/Inf."""
    return float(x) if math.isfinite(x) else None

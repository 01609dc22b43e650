"""What a caller may ask of the decoder: the settings and the messages, checked (no torch here)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

from etr_hub.errors import EtrHubError
from etr_hub.jsonl import is_unicode

ROLES = ("system", "user", "assistant")
Messages = Sequence[Mapping[str, str]] | str
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
# room for a skill expert's worked answer before its result (a 3-digit by 2-digit product: up to ~410 tokens)
DEFAULT_MAX_NEW_TOKENS = 512


class RequestSettings(TypedDict, total=False):
    """What a caller may set on `Hub.chat` / `Hub.complete` (every key optional)."""

    max_new_tokens: int  # default DEFAULT_MAX_NEW_TOKENS
    temperature: float | None  # None: the meta model's recommendation; 0: greedy
    top_p: float | None
    stop: list[str] | None
    seed: int | None
    ignore_eos: bool
    repetition_penalty: float | None
    presence_penalty: float
    frequency_penalty: float
    max_prompt_tokens: int | None  # None: the meta model's context


@dataclass
class Options:
    max_new_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    ignore_eos: bool
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_prompt_tokens: int | None = None
    explicit: frozenset[str] = frozenset()  # the sampling settings the caller set itself (the rest are defaults)

    def check(self) -> Options:
        if self.max_new_tokens < 1:
            raise EtrHubError(
                f"max_new_tokens must be at least 1 (got {self.max_new_tokens})", "pass e.g. max_new_tokens=256"
            )
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise EtrHubError(f"temperature must be ≥ 0 (got {self.temperature})", "use 0 for greedy decoding")
        if not 0 < self.top_p <= 1:
            raise EtrHubError(f"top_p must be in (0, 1] (got {self.top_p})", "use 1.0 to disable nucleus sampling")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise EtrHubError(
                f"repetition_penalty must be > 0 (got {self.repetition_penalty})",
                "use 1.0 for none, e.g. 1.2 against loops",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise EtrHubError(
                    f"{name} must be in [-2, 2] (got {getattr(self, name)})", "use 0 for none (OpenAI's range)"
                )
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise EtrHubError(f"seed {self.seed} is out of range", "use a seed between -2**63 and 2**64 - 1")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise EtrHubError(
                f"max_prompt_tokens must be at least 1 (got {self.max_prompt_tokens})",
                "pass e.g. `max_prompt_tokens=400`",
            )
        return self


EXPERT_SAMPLING = ("temperature", "top_p", "repetition_penalty")


def expert_sampling(opts: Options, declared: Mapping[str, float]) -> dict[str, float]:
    """An expert's decoding: what the caller set itself, else what the expert's bundle declares (a skill
    expert: greedy, as it was measured), else the meta model's recommendation that `opts` holds."""
    return {k: getattr(opts, k) if k in opts.explicit else declared.get(k, getattr(opts, k)) for k in EXPERT_SAMPLING}


def check_settings(
    max_new_tokens: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    *,
    repetition_penalty: float | None = None,
    seed: int | None = None,
    max_prompt_tokens: int | None = None,
) -> None:
    """Raise the one-line error for out-of-range decoding settings (callers check before loading);
    None: the model's default, checked when it is known."""
    Options(
        max_new_tokens,
        0.0 if temperature is None else temperature,
        1.0 if top_p is None else top_p,
        [],
        seed,
        False,
        1.0 if repetition_penalty is None else repetition_penalty,
        max_prompt_tokens=max_prompt_tokens,
    ).check()


def check_messages(messages: Messages) -> list[dict[str, str]]:
    """OpenAI-style messages, the last one a non-empty user message."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or not messages:
        raise EtrHubError("no messages", "pass at least one {'role': 'user', 'content': ...} message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise EtrHubError(
                f"message {i} is not {{'role': system|user|assistant, 'content': str}}", "fix the message list"
            )
        if not is_unicode(m["content"]):  # a lone surrogate (from \ud800 or undecodable bytes) breaks the tokenizer
            raise EtrHubError(
                f"message {i} is not valid Unicode text (it holds an unpaired surrogate)", "send UTF-8 text"
            )
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise EtrHubError(
            f"the last message is from the {out[-1]['role']}, not the user", "end the conversation with a user message"
        )
    if not out[-1]["content"].strip():
        raise EtrHubError("empty message", "type a question")
    return out


def check_prompt(prompt: str) -> str:
    """A raw prompt to continue: non-empty text every tokenizer takes."""
    if not isinstance(prompt, str) or not prompt:
        raise EtrHubError("empty prompt", "pass the text to continue")
    if not is_unicode(prompt):
        raise EtrHubError("the prompt is not valid Unicode text (it holds an unpaired surrogate)", "send UTF-8 text")
    return prompt

"""OpenAI's request and response shapes for the endpoints `etr-hub serve` offers.

Requests are strict: a parameter we would silently ignore (n=3, logprobs) is a 400, not a
surprise; so is a number out of range, NaN or infinite. Sampling settings a request leaves out
are the meta model's recommendation (as vLLM reads generation_config.json). The route record
travels in extension fields (`etr_route`, `etr_switch`, `etr_source`), never in the text.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from etr_hub.runtime.options import SEED_RANGE
from etr_hub.runtime.types import ChatResult


class ApiError(Exception):
    """An error answered as OpenAI's error object: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(
    message: str, type: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# -- requests ------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None  # accepted, not used

    def as_dict(self) -> dict[str, str]:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)  # tiny values decode greedily
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    n: Literal[1] | None = None
    user: str | None = Field(default=None, max_length=256)  # accepted, not used
    presence_penalty: float | None = Field(
        default=None, ge=-2, le=2
    )  # OpenAI's: l - presence, over the answer's tokens
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)  # OpenAI's: l - frequency * count
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)  # vLLM's extension: l / p if l > 0 else l * p
    ignore_eos: bool = False  # vLLM's extension; benchmarks use it for equal lengths

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops

    def settings(self, default_max: int, limit: int) -> dict[str, Any]:
        max_new = self.max_new_tokens() or min(default_max, limit)
        if max_new > limit:
            raise ApiError(
                400,
                f"max_tokens is {max_new}, this server allows at most {limit}",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        return {
            "max_new_tokens": max_new,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop or None,
            "seed": self.seed,
            "ignore_eos": self.ignore_eos,
            "repetition_penalty": self.repetition_penalty,
            "presence_penalty": self.presence_penalty or 0.0,
            "frequency_penalty": self.frequency_penalty or 0.0,
        }

    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: Literal[False] | None = None
    top_logprobs: None = None

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat_messages(self) -> list[dict[str, str]]:
        return [m.as_dict() for m in self.messages]


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: Literal[False] | None = None
    logprobs: None = None
    suffix: None = None
    best_of: Literal[1] | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request")
            v = v[0]
        if not v:
            raise ValueError("empty prompt")
        return v


def decode_json(body: bytes) -> Any:
    """The request body as JSON, or a 400: not UTF-8, not JSON, numbers too long, nesting too deep."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError(400, "the request body nests JSON too deeply", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer over 4300 digits
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None


def parse(model: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        what = "unrecognized request argument" if err["type"] == "extra_forbidden" else err["msg"]
        raise ApiError(400, f"{where}: {what}" if where else what, param=where or None, code="invalid_value") from None


# -- responses -----------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def route_record(result: ChatResult) -> dict:
    """Which expert answered, where it took over, with what probability, and whether it fell back."""
    return {"expert": result.expert, "route": [r.to_json() for r in result.route], "warnings": list(result.warnings)}


def route_header(result: ChatResult) -> str:
    record = {"expert": result.expert, "route": [r.to_json() for r in result.route]}
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"))  # ASCII, no newlines: a valid header


def usage(result: ChatResult) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _body(rid: str, obj: str, created: int, model: str, choice: dict | None, **rest: Any) -> dict:
    """OpenAI's response envelope; `choice` is the one choice (index 0), None for none."""
    choices = [] if choice is None else [{"index": 0, **choice, "logprobs": None}]
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": choices, **rest}


def chat_response(rid: str, created: int, model: str, result: ChatResult) -> dict:
    message = {"role": "assistant", "content": result.text}
    return _body(
        rid,
        "chat.completion",
        created,
        model,
        {"message": message, "finish_reason": result.finish_reason},
        usage=usage(result),
        etr_route=route_record(result),
    )


def chat_chunk(
    rid: str, created: int, model: str, delta: dict | None = None, finish: str | None = None, **ext: Any
) -> dict:
    return _body(rid, "chat.completion.chunk", created, model, {"delta": delta or {}, "finish_reason": finish}, **ext)


def completion_response(rid: str, created: int, model: str, result: ChatResult) -> dict:
    choice = {"text": result.text, "finish_reason": result.finish_reason}
    return _body(rid, "text_completion", created, model, choice, usage=usage(result), etr_route=route_record(result))


def completion_chunk(rid: str, created: int, model: str, text: str = "", finish: str | None = None, **ext: Any) -> dict:
    return _body(rid, "text_completion", created, model, {"text": text, "finish_reason": finish}, **ext)


def usage_chunk(rid: str, created: int, model: str, obj: str, result: ChatResult) -> dict:
    return _body(rid, obj, created, model, None, usage=usage(result))

"""Property: whatever body a client sends, the server's request handling (JSON decoding, the
pydantic request models, the settings and message checks the endpoints run before a request
is queued) either accepts it, with settings the decoder takes, or answers a 4xx with an
OpenAI-style error body — never a 500. (Cases through the real server: tests/test_serve.py.)"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etr_hub.errors import EtrHubError
from etr_hub.generation.sampling import Sampling
from etr_hub.runtime.options import check_messages, check_prompt, check_settings
from etr_hub.server import protocol as p

FIELDS = [
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "n",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "logprobs",
    "echo",
]
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)  # lone surrogates included
NUMBERS = (
    st.integers()
    | st.integers(min_value=2**60, max_value=2**200)
    | st.integers(max_value=-(2**60))
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, 1, 2, 1e-300, 5e-324, -0.0, 2.0000001])
)
LEAVES = st.none() | st.booleans() | NUMBERS | TEXT
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT | st.sampled_from(FIELDS), inner, max_size=3),
    max_leaves=10,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer", "robot"]) | VALUES, "content": TEXT | VALUES}
)
REQUEST = st.fixed_dictionaries(
    {"model": st.just("etr-hub") | VALUES},
    optional={
        "messages": st.lists(MESSAGE, max_size=3) | VALUES,
        "prompt": TEXT | VALUES,
        **{f: VALUES for f in FIELDS[3:]},
    },
)


def _body(kind_and_value) -> bytes:
    kind, value = kind_and_value
    if kind == "deep":
        return b'{"model": "etr-hub", "messages": ' + b"[" * value + b"]" * value + b"}"
    if kind == "huge":
        return b'{"model": "etr-hub", "messages": [], "seed": ' + b"9" * value + b"}"
    if kind == "bytes":
        return value
    return json.dumps(value, allow_nan=True).encode()


BODIES = st.one_of(
    st.tuples(st.just("json"), REQUEST),
    st.tuples(st.just("json"), VALUES),
    st.tuples(st.just("deep"), st.integers(500, 200_000)),
    st.tuples(st.just("huge"), st.integers(4000, 5000)),
    st.tuples(st.just("bytes"), st.binary(max_size=60)),
    st.tuples(st.just("bytes"), REQUEST.map(lambda r: json.dumps(r).encode().replace(b"etr-hub", b"etr-h\xffub"))),
)


def handle(body: bytes, model: type) -> dict:
    """What an endpoint does before it queues the request (app.py), minus the model itself."""
    req = p.parse(model, p.decode_json(body))
    knobs = req.settings(256, 2048)
    try:
        check_settings(
            knobs["max_new_tokens"],
            knobs["temperature"],
            knobs["top_p"],
            repetition_penalty=knobs["repetition_penalty"],
            seed=knobs["seed"],
        )
        if model is p.ChatRequest:
            check_messages(req.chat_messages())
        else:
            check_prompt(req.prompt)
    except EtrHubError as exc:  # the worker turns these into 400s (messages: before queueing)
        raise p.ApiError(400, str(exc)) from None
    Sampling.make(knobs["temperature"] or 0.0, knobs["top_p"] or 1.0, knobs["seed"])  # the decoder takes the seed
    return knobs


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=BODIES, model=st.sampled_from([p.ChatRequest, p.CompletionRequest]))
def test_request_handling_is_accepted_or_a_4xx(body, model):
    raw = _body(body)
    try:
        knobs = handle(raw, model)
    except p.ApiError as exc:
        assert 400 <= exc.status < 500
        err = exc.body()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        json.dumps(exc.body(), ensure_ascii=False).encode("utf-8")  # the error itself can be sent
        return
    assert 1 <= knobs["max_new_tokens"] <= 2048


def test_the_property_reaches_acceptance():
    """Non-vacuous: a plain request passes the same pipeline."""
    body = json.dumps(
        {"model": "etr-hub", "messages": [{"role": "user", "content": "hi"}], "seed": 2**64 - 1, "temperature": 1e-300}
    ).encode()
    assert handle(body, p.ChatRequest)["seed"] == 2**64 - 1

"""`etr-hub serve` as a real subprocess on 127.0.0.1, called by the official `openai` client.

One module-wide world (a tiny random meta model with a local expert) served with an API key,
plus, for the remote-expert test, a second server acting as that expert's endpoint.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.helpers import run_cli
from tests.serve_support import ROUTE_PROMPT, Server, free_port, make_world, streaming_client

KEY = "test-key-7f3a9c"  # looked for in the server's log afterwards: it must not be there
MAX_QUEUE = 8
LONG = {"max_tokens": 420, "extra_body": {"ignore_eos": True}}  # ≈1 s of decoding on the tiny model


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """S: the main world (api key, queue 8). B: a bare tiny hub acting as A's remote expert. A: a hub
    whose expert 'remote' is B's OpenAI endpoint. Started together: startup is most of the cost."""
    from tests.tiny_models import make_tiny_llama

    root = tmp_path_factory.mktemp("serve")
    expert_dir = make_tiny_llama(root / "s" / "expert", seed=5)
    home_s = make_world(root / "s", experts={"astro": {"kind": "local", "path": str(expert_dir)}})
    home_b = make_world(root / "b", meta_seed=1)
    port_b = free_port()
    remote = {"kind": "openai", "url": f"http://127.0.0.1:{port_b}/v1", "model": "etr-hub", "timeout_s": 10}
    home_a = make_world(root / "a", experts={"remote": remote})
    s = Server(
        home_s,
        "--max-queue",
        str(MAX_QUEUE),
        "--max-tokens",
        "512",
        "--max-body-kb",
        "64",
        env={"ETR_HUB_API_KEY": KEY},
    )
    b = Server(home_b, port=port_b)
    a = Server(home_a)
    try:
        for srv in (s, b, a):
            srv.wait_ready()
        yield {"s": s, "a": a, "b": b}
    finally:
        for srv in (s, b, a):
            srv.stop()
    assert KEY not in s.output()  # no secrets in logs
    for srv in (s, a):
        assert "Traceback" not in srv.output() and " 500 " not in srv.output(), srv.output()[-3000:]


CLIENTS: list[openai.OpenAI] = []


def client(server: Server, key: str | None = KEY, **kw) -> openai.OpenAI:
    c = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "none", max_retries=0, timeout=60, **kw)
    CLIENTS.append(c)
    return c


@pytest.fixture(autouse=True)
def _close_clients():
    """Close each test's clients (their pooled sockets) when it ends, not whenever they are collected."""
    yield
    while CLIENTS:
        CLIENTS.pop().close()


def ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def health(server: Server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=5).json()["queue"]


# -- the OpenAI surface ---------------------------------------------------------------------------
def test_models_lists_hub_and_experts(servers):
    models = client(servers["s"]).models.list().data
    assert [m.id for m in models] == ["etr-hub", "astro"]
    assert models[0].model_extra["etr_kind"] == "hub" and models[1].model_extra["etr_kind"] == "expert"


def test_chat_non_streaming_with_route_in_field_and_header(servers):
    raw = client(servers["s"]).chat.completions.with_raw_response.create(
        model="etr-hub", messages=ask(ROUTE_PROMPT), max_tokens=12
    )
    completion = raw.parse()
    route = completion.model_extra["etr_route"]
    assert (
        route["expert"] == "astro" and route["route"][0]["expert"] == "astro" and route["route"][0]["token_index"] == 0
    )
    assert 0.5 < route["route"][0]["probability"] <= 1.0
    assert json.loads(raw.headers["x-etr-route"]) == {"expert": "astro", "route": route["route"]}
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 12
    assert "astro" not in completion.choices[0].message.content  # never mixed into the text


def test_chat_streaming_matches_non_streaming(servers):
    c = client(servers["s"])
    request = {
        "model": "etr-hub",
        "messages": ask("Why do stars twinkle?"),
        "max_tokens": 16,
        "temperature": 1.0,
        "seed": 7,
    }
    whole = c.chat.completions.create(**request)
    chunks = list(c.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    switches = [ch.model_extra["etr_switch"] for ch in chunks if "etr_switch" in ch.model_extra]
    final = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(final) == 1 and final[0].model_extra["etr_route"] == whole.model_extra["etr_route"]
    assert switches == whole.model_extra["etr_route"]["route"]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 16


def test_direct_expert_and_raw_completions(servers):
    c = client(servers["s"])
    direct = c.chat.completions.create(model="astro", messages=ask("hello"), max_tokens=6)
    assert direct.model_extra["etr_route"]["route"][0] == {
        "expert": "astro",
        "token_index": 0,
        "probability": 1.0,
        "fell_back": False,
        "reason": "requested",
    }
    plain = c.completions.create(model="etr-hub", prompt="Once upon a time", max_tokens=6, temperature=1.0, seed=1)
    assert (
        plain.object == "text_completion"
        and plain.usage.completion_tokens == 6
        and plain.model_extra["etr_route"]["route"] == []
    )
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(
            model="etr-hub", prompt="Once upon a time", max_tokens=6, temperature=1.0, seed=1, stream=True
        )
        if ch.choices
    )
    assert streamed == plain.choices[0].text


BAD_REQUESTS = [
    # (id, how to send, expected status, expected error code or message part)
    ("malformed-json", {"content": b'{"model": "etr-hub", "messages": ['}, 400, "invalid_json"),
    ("not-an-object", {"json": [1, 2]}, 400, "must be a JSON object"),
    ("wrong-type", {"json": {"model": "etr-hub", "messages": "hi"}}, 400, "messages"),
    (
        "bad-role",
        {"json": {"model": "etr-hub", "messages": [{"role": "robot", "content": "x"}]}},
        400,
        "messages.0.role",
    ),
    (
        "unknown-field",
        {"json": {"model": "etr-hub", "messages": ask("x"), "colour": "blue"}},
        400,
        "unrecognized request argument",
    ),
    ("n-above-1", {"json": {"model": "etr-hub", "messages": ask("x"), "n": 2}}, 400, "n:"),
    ("temperature-range", {"json": {"model": "etr-hub", "messages": ask("x"), "temperature": 5}}, 400, "temperature"),
    (
        "last-not-user",
        {"json": {"model": "etr-hub", "messages": [{"role": "assistant", "content": "x"}]}},
        400,
        "not the user",
    ),
    ("unknown-model", {"json": {"model": "gpt-9", "messages": ask("x")}}, 404, "model_not_found"),
    (
        "max-tokens-limit",
        {"json": {"model": "etr-hub", "messages": ask("x"), "max_tokens": 5000}},
        400,
        "max_tokens_too_large",
    ),
    ("oversized-body", {"json": {"model": "etr-hub", "messages": ask("x" * 70_000)}}, 413, "request_too_large"),
    (
        "prompt-over-limit",
        {"json": {"model": "etr-hub", "messages": ask("x " * 300)}},
        400,
        "at most 400 (--max-prompt-tokens)",
    ),
    (
        "completion-prompt-over-limit",
        {"json": {"model": "etr-hub", "prompt": "x " * 300}, "path": "/v1/completions"},
        400,
        "context_length_exceeded",
    ),
    (
        "seed-2**70",
        {"json": {"model": "etr-hub", "messages": ask("x"), "seed": 2**70}},
        400,
        "seed: Input should be less than or equal to",
    ),
    (
        "nan-temperature",
        {"content": b'{"model": "etr-hub", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}'},
        400,
        "temperature",
    ),
    (
        "infinite-penalty",
        {
            "content": b'{"model": "etr-hub", "messages": [{"role": "user", "content": "x"}],'
            b' "repetition_penalty": Infinity}'
        },
        400,
        "repetition_penalty",
    ),
    (
        "penalty-range",
        {"json": {"model": "etr-hub", "messages": ask("x"), "presence_penalty": 2.5}},
        400,
        "presence_penalty",
    ),
    (
        "deep-json",
        {"content": b'{"model": "etr-hub", "messages": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"},
        400,
        "nests JSON too deeply",
    ),
    (
        "not-utf8",
        {"content": b'{"model": "etr-hub", "messages": [{"role": "user", "content": "caf\xe9"}]}'},
        400,
        "invalid_json",
    ),
    (
        "lone-surrogate",
        {"content": b'{"model": "etr-hub", "messages": [{"role": "user", "content": "\\ud800"}]}'},
        400,
        "not valid Unicode",
    ),
    (
        "completion-lone-surrogate",
        {"content": b'{"model": "etr-hub", "prompt": "\\udfff once"}', "path": "/v1/completions"},
        400,
        "not valid Unicode",
    ),
    (
        "5000-digit-number",
        {"content": b'{"model": "etr-hub", "messages": [], "max_tokens": ' + b"9" * 5000 + b"}"},
        400,
        "invalid_json",
    ),
    ("missing-key", {"json": {"model": "etr-hub", "messages": ask("x")}, "key": None}, 401, "invalid_api_key"),
    (
        "wrong-key",
        {"json": {"model": "etr-hub", "messages": ask("x")}, "key": "test-key-7f3a9d"},
        401,
        "invalid_api_key",
    ),
    (
        "key-not-bearer",
        {"json": {"model": "etr-hub", "messages": ask("x")}, "raw_auth": f"Basic {KEY}"},
        401,
        "invalid_api_key",
    ),
]


@pytest.mark.parametrize("send,status,expected", [pytest.param(*row[1:], id=row[0]) for row in BAD_REQUESTS])
def test_bad_requests_get_the_right_4xx(servers, send, status, expected):
    send = dict(send)
    key = send.pop("key", KEY)
    auth = send.pop("raw_auth", f"Bearer {key}" if key else None)
    headers = {"Authorization": auth} if auth else {}
    if "content" in send:
        headers["Content-Type"] = "application/json"
    path = send.pop("path", "/v1/chat/completions")
    resp = httpx.post(f"{servers['s'].url}{path}", headers=headers, timeout=30, **send)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert expected in (err["code"] or "") or expected in err["message"], err


def test_openai_client_sees_auth_errors(servers):
    with pytest.raises(openai.AuthenticationError):
        client(servers["s"], key="wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        client(servers["s"]).chat.completions.create(model="nope", messages=ask("x"))
    assert httpx.get(f"{servers['s'].url}/health").status_code == 200  # health needs no key


def test_cors_is_off_by_default(servers):
    resp = httpx.options(
        f"{servers['s'].url}/v1/models",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in resp.headers


def test_refusals_before_loading_anything(servers):
    res = run_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()), env={"ETR_HUB_API_KEY": ""})
    assert res.returncode == 1 and "without an API key" in res.stderr and "--insecure" in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    res = run_cli("serve", "--port", str(servers["s"].port))
    assert res.returncode == 1 and "already in use" in res.stderr


@pytest.mark.parametrize("env", [{"ETR_HUB_API_KEY": "   "}, {"ETR_HUB_API_KEY": "\t\n"}, {"ETR_HUB_API_KEY": " k3y "}])
def test_blank_api_key_is_refused_at_start(env):
    res = run_cli("serve", "--port", str(free_port()), env=env)
    assert res.returncode == 1 and res.stderr.startswith("error: the API key is ") and res.stderr.count("\n") == 1, (
        res.stderr
    )
    assert env["ETR_HUB_API_KEY"] not in res.stderr.removeprefix("error:")


def test_tiny_temperature_streams_like_greedy(servers):
    c = client(servers["s"])
    greedy = (
        c.chat.completions.create(model="etr-hub", messages=ask("hello there"), max_tokens=12, temperature=0)
        .choices[0]
        .message.content
    )
    chunks = list(
        c.chat.completions.create(
            model="etr-hub", messages=ask("hello there"), max_tokens=12, temperature=1e-300, stream=True
        )
    )
    assert not any("error" in (ch.model_extra or {}) for ch in chunks)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == greedy


def test_penalties_reach_the_decoder(servers):
    c = client(servers["s"])
    kw = {"model": "etr-hub", "messages": ask("hello there"), "max_tokens": 24, "temperature": 0}
    plain = c.chat.completions.create(**kw).choices[0].message.content
    assert len(set(plain)) < len(plain) // 2  # the tiny model repeats itself...
    for extra in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"extra_body": {"repetition_penalty": 3.0}}):
        assert c.chat.completions.create(**kw, **extra).choices[0].message.content != plain, (
            extra
        )  # ...less so with a penalty


def test_over_long_prompt_is_refused_before_it_waits(servers):
    """While the only worker is busy, a prompt over --max-prompt-tokens is refused at once (it never
    queues); a 1 MB prompt to a server with the default 1 MiB body limit likewise."""
    s = servers["s"]
    before = health(s)
    body = {
        "model": "etr-hub",
        "messages": ask("keep the worker busy"),
        "stream": True,
        "max_tokens": 420,
        "ignore_eos": True,
    }
    with streaming_client(s.url, body, KEY) as proc:  # `with`: its stdout pipe is closed
        assert proc.stdout.readline().strip() == "got"
        started = time.monotonic()
        with pytest.raises(openai.BadRequestError) as err:
            client(s).chat.completions.create(model="etr-hub", messages=ask("x " * 300), max_tokens=4)
        assert time.monotonic() - started < 2 and health(s)["running"]  # answered while the long one still runs
        assert err.value.body["code"] == "context_length_exceeded" and "at most 400" in err.value.body["message"]
        proc.kill()
    after = health(s)
    assert after["failed"] == before["failed"] and after["rejected"] == before["rejected"]  # it never reached the queue
    b_before, started = health(servers["b"]), time.monotonic()
    resp = httpx.post(
        f"{servers['b'].url}/v1/chat/completions",
        json={"model": "etr-hub", "messages": ask("word " * 200_000)},
        timeout=60,
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded", resp.text
    assert time.monotonic() - started < 30 and health(servers["b"]) == b_before


# -- load and faults ------------------------------------------------------------------------------
def test_full_queue_answers_429_with_retry_after(servers):
    """1 running + MAX_QUEUE waiting long requests; the ones beyond get a clean 429."""
    c = client(servers["s"])

    def long_request(i):
        try:
            c.chat.completions.create(model="etr-hub", messages=ask(f"long {i}"), **LONG)
            return 200, None
        except openai.APIStatusError as e:
            return e.status_code, e

    with ThreadPoolExecutor(MAX_QUEUE + 5) as pool:
        outcomes = list(pool.map(long_request, range(MAX_QUEUE + 5)))
    statuses = sorted(s for s, _ in outcomes)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= MAX_QUEUE + 1 and statuses.count(429) >= 1, statuses
    for status, exc in outcomes:
        if status == 429:
            assert int(exc.response.headers["retry-after"]) >= 1
            assert exc.body["code"] == "queue_full" and exc.body["type"] == "rate_limit_error"
    assert health(servers["s"])["rejected"] >= 1


def test_16_streaming_clients_get_their_own_answers(servers):
    """16 concurrent streaming clients × 4 requests: each completes (or gets a clean 429/503),
    and each answer equals the same request answered alone (sampled with a fixed seed)."""
    requests = [
        {
            "model": "etr-hub",
            "messages": ask(f"client {c} asks question {r}: what is {c * 7 + r}?"),
            "max_tokens": 12,
            "temperature": 1.0,
            "seed": 100 * c + r,
        }
        for c in range(16)
        for r in range(4)
    ]
    alone = client(servers["s"])
    reference = [alone.chat.completions.create(**req).choices[0].message.content for req in requests]
    assert len(set(reference)) > 56  # distinct answers: a mix-up would show

    outcomes: dict[int, object] = {}

    def one_client(c):
        cl = client(servers["s"])
        for r in range(4):
            k = 4 * c + r
            for _attempt in range(30):  # a 429 is a clean answer; honour Retry-After (capped for the test)
                try:
                    chunks = cl.chat.completions.create(**requests[k], stream=True)
                    outcomes[k] = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
                    break
                except openai.APIStatusError as e:
                    assert e.status_code in (429, 503), (e.status_code, e.body)
                    outcomes[k] = e.status_code
                    time.sleep(min(0.5, int(e.response.headers["retry-after"])))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one_client, range(16)))
    assert len(outcomes) == 64
    answered = [k for k, v in outcomes.items() if isinstance(v, str)]
    assert len(answered) >= 60, outcomes
    for k in answered:
        assert outcomes[k] == reference[k], f"request {k} got another request's answer"


def test_killed_client_frees_its_slot_and_server_keeps_serving(servers):
    s = servers["s"]
    before = health(s)
    body = {
        "model": "etr-hub",
        "messages": ask("a long answer please"),
        "stream": True,
        "max_tokens": 420,
        "ignore_eos": True,
    }
    with streaming_client(s.url, body, KEY) as proc:  # `with`: its stdout pipe is closed
        for _ in range(3):
            assert proc.stdout.readline().strip() == "got"
        proc.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        h = health(s)
        if not h["running"] and h["cancelled"] > before["cancelled"]:
            break
        time.sleep(0.05)
    assert h["cancelled"] == before["cancelled"] + 1 and h["completed"] == before["completed"], (
        h
    )  # stopped, not finished
    answer = client(s).chat.completions.create(model="etr-hub", messages=ask("still there?"), max_tokens=4)
    assert answer.usage.completion_tokens == 4


def test_remote_expert_killed_mid_answer_meta_model_finishes(servers):
    """A's expert 'remote' is B (another etr-hub serve). B is killed while it streams its part
    of the answer: A's meta model finishes the answer and the route record says it fell back."""
    a, b = servers["a"], servers["b"]
    stream = client(a).chat.completions.create(model="etr-hub", messages=ask(ROUTE_PROMPT), stream=True, **LONG)
    sources, final, killed = [], None, False
    for chunk in stream:
        extra = chunk.model_extra or {}
        if chunk.choices and chunk.choices[0].delta.content:
            sources.append(extra.get("etr_source"))
            if extra.get("etr_source") == "remote" and not killed and sources.count("remote") >= 3:
                b.kill()  # SIGKILL, mid-answer
                killed = True
        if chunk.choices and chunk.choices[0].finish_reason:
            final = chunk
    assert killed and final is not None
    route = final.model_extra["etr_route"]
    [switch] = route["route"]
    assert switch["expert"] == "remote" and switch["fell_back"] is True and "remote expert 'remote'" in switch["reason"]
    assert any("meta model finished the answer" in w for w in route["warnings"])
    first_meta = sources.index("meta")
    assert sources[:first_meta] and set(sources[:first_meta]) == {"remote"} and set(sources[first_meta:]) == {"meta"}
    assert final.choices[0].finish_reason == "length"  # the full budget was used: the answer completed
    # with B gone, A keeps answering (the meta model alone, the fallback recorded)
    again = client(a).chat.completions.create(model="etr-hub", messages=ask(ROUTE_PROMPT), max_tokens=8)
    assert again.usage.completion_tokens == 8 and again.model_extra["etr_route"]["route"][0]["fell_back"] is True

"""GET /metrics and the JSON request log of a real `etr-hub serve` on 127.0.0.1.

K: a world whose expert takes every chat (the tiny meta model routes all prompts to it), served
with an API key (metrics behind it, prompts kept out of the log). P: a world with no expert (the
meta model answers alone), with --metrics-public and --log-prompts. Each counter is read before and
after a test's requests, so a test sees exactly what its own requests added.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve_support import ROUTE_PROMPT, Server, free_port, home_env, make_world

KEY = "metrics-key-41c7e2"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    from tests.tiny_models import make_tiny_llama

    root = tmp_path_factory.mktemp("metrics")
    expert_dir = make_tiny_llama(root / "expert", seed=5)
    gone = {"kind": "openai", "url": f"http://127.0.0.1:{free_port()}/v1", "model": "x", "timeout_s": 5}  # nobody there
    home = make_world(root / "k", experts={"astro": {"kind": "local", "path": str(expert_dir)}, "gone": gone})
    k = Server(home, env={"ETR_HUB_API_KEY": KEY})
    pub_home = make_world(root / "p")
    pub = Server(pub_home, "--metrics-public", "--log-prompts", env={"ETR_HUB_API_KEY": KEY})
    try:
        for srv in (k, pub):
            srv.wait_ready()
        yield {"k": k, "p": pub, "home_p": pub_home}
    finally:
        for srv in (k, pub):
            srv.stop()
    for srv in (k, pub):
        assert KEY not in srv.output() and "Traceback" not in srv.output(), srv.output()[-3000:]


def scrape(server: Server, headers: dict | None = None) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from the server's /metrics, read by Prometheus' own parser."""
    r = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests_total(samples: dict) -> float:
    return sum(v for (name, _), v in samples.items() if name == "etr_hub_requests_total")


def scrape_after(server: Server, before: dict, requests: int, headers: dict | None = None) -> dict:
    """A scrape once `requests` more requests are counted: the server counts a request just after its
    last byte is sent, so the client can be a moment ahead."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(server, headers)
        if requests_total(samples) - requests_total(before) >= requests or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def chat(server: Server, prompt: str = ROUTE_PROMPT, **extra) -> httpx.Response:
    body = {"model": "etr-hub", "messages": [{"role": "user", "content": prompt}], "max_tokens": 6, **extra}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    return r


def request_log(server: Server) -> list[dict]:
    """The server's JSON request log lines (its stderr also has uvicorn's lines, which are not JSON)."""
    return [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]


def log_line(server: Server, request_id: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [r for r in request_log(server) if r["request_id"] == request_id]
        if lines:
            assert len(lines) == 1
            return lines[0]
        time.sleep(0.05)
    raise AssertionError(f"no request log line for {request_id}: {server.output()[-2000:]}")


def test_metrics_need_the_key_unless_public(servers):
    assert httpx.get(f"{servers['k'].url}/metrics", timeout=10).status_code == 401
    assert (
        httpx.get(f"{servers['k'].url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=10).status_code
        == 401
    )
    scrape(servers["k"], AUTH)
    scrape(servers["p"])  # --metrics-public: no key
    assert httpx.get(f"{servers['p'].url}/v1/models", timeout=10).status_code == 401  # /v1 still needs it


def test_counters_move_by_exactly_the_requests(servers):
    k = servers["k"]
    before = scrape(k, AUTH)
    routed = chat(k).json()
    assert routed["etr_route"]["expert"] == "astro"
    direct = httpx.post(  # names the expert: tokens count for it, but no route decision
        f"{k.url}/v1/completions", json={"model": "astro", "prompt": "Once", "max_tokens": 3}, headers=AUTH, timeout=60
    ).json()
    raw = httpx.post(  # the meta model's raw continuation: not routed either
        f"{k.url}/v1/completions",
        json={"model": "etr-hub", "prompt": "Once", "max_tokens": 2},
        headers=AUTH,
        timeout=60,
    ).json()
    after = scrape_after(k, before, 3, AUTH)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    chat_ok = {"endpoint": "/v1/chat/completions", "model": "etr-hub", "status": "200"}
    assert delta("etr_hub_requests_total", **chat_ok) == 1
    assert delta("etr_hub_requests_total", endpoint="/v1/completions", model="astro", status="200") == 1
    assert delta("etr_hub_requests_total", endpoint="/v1/completions", model="etr-hub", status="200") == 1
    assert delta("etr_hub_route_decisions_total", expert="astro") == 1
    assert delta("etr_hub_route_decisions_total", expert="meta") == 0
    hub_prompt = routed["usage"]["prompt_tokens"] + raw["usage"]["prompt_tokens"]
    assert delta("etr_hub_prompt_tokens_total", model="etr-hub") == hub_prompt > 0
    hub_completion = routed["usage"]["completion_tokens"] + raw["usage"]["completion_tokens"]
    assert delta("etr_hub_completion_tokens_total", model="etr-hub") == hub_completion == 8
    assert delta("etr_hub_prompt_tokens_total", model="astro") == direct["usage"]["prompt_tokens"] > 0
    assert delta("etr_hub_completion_tokens_total", model="astro") == direct["usage"]["completion_tokens"] == 3
    ttft = {"endpoint": "/v1/chat/completions"}
    assert delta("etr_hub_time_to_first_token_seconds_count", **ttft) == 1
    assert delta("etr_hub_time_to_first_token_seconds_sum", **ttft) > 0
    assert delta("etr_hub_switch_latency_seconds_count", expert="astro") == 1
    assert value(after, "etr_hub_queue_depth") == 0
    assert value(after, "etr_hub_experts_loaded") == 1
    assert value(after, "etr_hub_expert_memory_bytes", expert="astro") > 0
    assert not any(name.startswith("etr_hub_fallbacks") and delta(name, **dict(labels)) for name, labels in after)


def test_a_meta_only_answer_counts_as_meta(servers):
    pub = servers["p"]
    before = scrape(pub)
    answer = chat(pub, "Say hello.").json()
    assert answer["etr_route"]["expert"] is None
    after = scrape_after(pub, before, 1)
    meta = ("etr_hub_route_decisions_total", (("expert", "meta"),))
    assert after.get(meta, 0) - before.get(meta, 0) == 1
    assert [key for key in after if key[0] == "etr_hub_route_decisions_total"] == [meta]
    tokens = ("etr_hub_completion_tokens_total", (("model", "etr-hub"),))
    assert after[tokens] - before.get(tokens, 0) == answer["usage"]["completion_tokens"]
    assert value(after, "etr_hub_experts_loaded") == 0


def test_one_json_log_line_per_request_without_the_prompt(servers):
    k = servers["k"]
    secret = "purple-octopus-9813"
    answer = chat(k, f"{ROUTE_PROMPT} {secret}").json()
    line = log_line(k, answer["id"])
    assert line["endpoint"] == "/v1/chat/completions" and line["status"] == 200 and line["model"] == "etr-hub"
    assert line["tokens"] == answer["usage"]
    assert line["route"]["expert"] == answer["etr_route"]["expert"]
    timings = line["timings_ms"]
    assert timings["total"] >= timings["first_token"] >= timings["queue"] >= 0
    assert "prompt" not in line and "answer" not in line
    assert secret not in k.output()


def test_log_prompts_puts_prompt_and_answer_in_the_line(servers):
    pub = servers["p"]
    secret = "purple-octopus-9813"
    answer = chat(pub, secret).json()
    line = log_line(pub, answer["id"])
    assert line["prompt"] == [{"role": "user", "content": secret}]
    assert line["answer"] == answer["choices"][0]["message"]["content"]


def test_refused_requests_are_counted_and_logged(servers):
    k = servers["k"]
    before = scrape(k, AUTH)
    assert httpx.get(f"{k.url}/v1/models", timeout=10).status_code == 401
    after = scrape_after(k, before, 1, AUTH)
    labels = {"endpoint": "/v1/models", "model": "-", "status": "401"}
    assert value(after, "etr_hub_requests_total", **labels) - value(before, "etr_hub_requests_total", **labels) == 1
    assert any(r["status"] == 401 and r["endpoint"] == "/v1/models" for r in request_log(k))


def test_a_failed_expert_counts_as_a_fallback_with_a_bounded_reason(servers):
    k = servers["k"]
    before = scrape(k, AUTH)
    body = {"model": "gone", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    answer = httpx.post(f"{k.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60).json()
    switch = answer["etr_route"]["route"][0]
    assert switch["fell_back"] and "unreachable" in switch["reason"]
    after = scrape_after(k, before, 1, AUTH)
    fallbacks = {key: v for key, v in after.items() if key[0] == "etr_hub_fallbacks_total"}
    assert fallbacks == {("etr_hub_fallbacks_total", (("expert", "gone"), ("reason", "unreachable"))): 1.0}
    assert value(after, "etr_hub_route_decisions_total", expert="gone") == 0  # named, not routed
    line = log_line(k, answer["id"])
    assert line["route"]["switches"][0]["fell_back"] and line["route"]["warnings"] == 1


@pytest.mark.parametrize(
    ("problem", "reason"),
    [
        ("remote expert 'x' at http://h/v1 is unreachable (ConnectError: refused)", "unreachable"),
        ("remote expert 'x' at http://h/v1 did not answer within 5 s", "timeout"),
        ("remote expert 'x' at http://h/v1 answered HTTP 503", "http_5xx"),
        ("remote expert 'x' at http://h/v1 refused the request without an API key (HTTP 401)", "auth"),
        ("remote expert 'x' at http://h/v1 failed mid-answer: ReadError: eof", "failed_mid_answer"),
        ("expert 'x' failed: ValueError: something new", "error"),
        ("expert 'x' is cooling down after 3 failure(s) in a row: remote expert 'x' is unreachable", "cooling_down"),
        (None, "error"),
    ],
)
def test_fallback_reasons_are_a_small_set(problem, reason):
    from etr_hub.server.metrics import fallback_reason

    assert fallback_reason(problem) == reason


def test_each_app_has_its_own_registry(servers):
    """Two apps in one process: each counts its own requests (the global registry would refuse the
    second app's metrics as duplicates)."""
    from fastapi.testclient import TestClient

    from etr_hub.runtime import Hub
    from etr_hub.server import ServerConfig, create_app

    with home_env(servers["home_p"]):
        hub = Hub.open()
    try:
        one, two = create_app(hub, ServerConfig()), create_app(hub, ServerConfig())
        with TestClient(one) as c1, TestClient(two) as c2:
            assert c1.get("/v1/models").status_code == 200
            labels = {"endpoint": "/v1/models", "model": "-", "status": "200"}
            counts = [value(parse(c.get("/metrics").text), "etr_hub_requests_total", **labels) for c in (c1, c2)]
            assert counts == [1.0, 0.0]
    finally:
        hub.close()


def test_a_streamed_answer_is_counted_when_its_stream_ends(servers):
    k = servers["k"]
    before = scrape(k, AUTH)
    body = {
        "model": "etr-hub",
        "messages": [{"role": "user", "content": ROUTE_PROMPT}],
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = []
    with httpx.stream("POST", f"{k.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[len("data: ") :]))
    usage = chunks[-1]["usage"]
    after = scrape_after(k, before, 1, AUTH)
    assert (
        value(after, "etr_hub_completion_tokens_total", model="etr-hub")
        - value(before, "etr_hub_completion_tokens_total", model="etr-hub")
        == usage["completion_tokens"]
        == 5
    )
    line = log_line(k, chunks[0]["id"])
    assert line["stream"] is True and line["tokens"] == usage and line["route"]["expert"] == "astro"
    assert line["timings_ms"]["total"] >= line["timings_ms"]["first_token"] > 0

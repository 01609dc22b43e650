"""What the server counts (GET /metrics, Prometheus text format) and logs (one JSON line per request).

Each app has its own `CollectorRegistry`, so several apps in one process (tests, embedding) never
share or clash. A `Trace` follows one /v1 request: the ASGI middleware `RequestTrace` opens it,
the endpoint names its model and id, the event loop feeds it the job's events, and when the
response is over (streams included) `Metrics.finish` counts it and logs it on "etr_hub.requests".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from etr_hub.runtime.types import ChatResult, Done, Switch, TextDelta
from etr_hub.server import protocol as p
from etr_hub.server.worker import Failed

request_log = logging.getLogger("etr_hub.requests")

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models")
META = "meta"  # the route label when the meta model answered alone
# An expert's failure, as a bounded label: (words in its message, reason); the whole message stays in the log.
FALLBACK_REASONS = (
    (("is cooling down after",), "cooling_down"),  # asked for by name while out of routing (backends/health.py)
    (("unreachable",), "unreachable"),
    (("did not answer within", "stopped answering", "timed out", "timeout"), "timeout"),
    (("api key", "http 401", "http 403"), "auth"),
    (("http 5",), "http_5xx"),
    (("http ",), "http_error"),
    (("malformed",), "malformed"),
    (("mid-answer",), "failed_mid_answer"),
    (("load",), "load_failed"),
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Trace:
    """One /v1 request as it goes: what it asked, when its events came, how it ended."""

    endpoint: str
    started: float = field(default_factory=time.monotonic)
    request_id: str = field(default_factory=lambda: p.new_id("req"))
    model: str = "-"  # the request's model until the endpoint has parsed it
    stream: bool = False
    routed: bool = False  # asked the hub (model = its id), not one expert directly
    status: int | None = None
    prompt: Any = None  # the messages or prompt, logged only with --log-prompts
    result: ChatResult | None = None
    error: str | None = None
    job: Any = None  # the worker.Job, once queued (its `started` ends the queue wait)
    first_token: float | None = None
    switch_at: dict[str, float] = field(default_factory=dict)  # expert -> when its Switch came
    switch_latency: dict[str, float] = field(default_factory=dict)  # expert -> Switch to its first token

    def see(self, item: Any) -> None:
        """A job event as the event loop receives it."""
        now = time.monotonic()
        if isinstance(item, TextDelta):
            if self.first_token is None:
                self.first_token = now
            since = self.switch_at.get(item.source)
            if since is not None and item.source not in self.switch_latency:
                self.switch_latency[item.source] = now - since
        elif isinstance(item, Switch) and item.switch.reason != "requested":  # routed, not named by the caller
            self.switch_at.setdefault(item.switch.expert, now)
        elif isinstance(item, Done):
            self.result = item.result
        elif isinstance(item, Failed):
            self.error = item.message

    def timings_ms(self, ended: float) -> dict[str, float | None]:
        def ms(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 2)

        return {
            "total": ms(self.started, ended),
            "queue": ms(self.started, getattr(self.job, "started", None)),
            "first_token": ms(self.started, self.first_token),
            **{f"switch_{name}": round(s * 1000, 2) for name, s in self.switch_latency.items()},
        }


class _HubState(Collector):
    """Read at scrape time: queue depth, and the experts loaded with the memory each holds."""

    def __init__(self, service: Any):
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        worker = self.service.worker
        yield GaugeMetricFamily("etr_hub_queue_depth", "Requests waiting for the meta model", value=len(worker.queue))
        yield GaugeMetricFamily(
            "etr_hub_requests_running", "Requests the worker is answering now", value=len(worker.active)
        )
        loaded = _loaded_experts(getattr(self.service.hub, "pool", None))
        yield GaugeMetricFamily("etr_hub_experts_loaded", "Experts whose model is loaded", value=len(loaded))
        memory = GaugeMetricFamily(
            "etr_hub_expert_memory_bytes", "Memory a loaded expert holds beyond the meta model", labels=["expert"]
        )
        for name, nbytes in loaded.items():
            memory.add_metric([name], nbytes)
        yield memory


def _loaded_experts(pool: Any) -> dict[str, int]:
    """{name: bytes} of the pool's loaded experts; the worker thread may change it while we read."""
    if pool is None:
        return {}
    for _ in range(3):
        try:
            return {name: int(backend.memory_bytes) for name, backend in list(pool.loaded.items())}
        except RuntimeError:  # changed size during iteration: read again
            continue
    return {}


class Metrics:
    def __init__(self, service: Any, *, log_prompts: bool = False):
        self.registry = CollectorRegistry(auto_describe=True)
        self.log_prompts = log_prompts
        r = self.registry
        self.requests = Counter(
            "etr_hub_requests",
            "Requests by endpoint, model and HTTP status",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter("etr_hub_prompt_tokens", "Prompt tokens by model", ["model"], registry=r)
        self.completion_tokens = Counter(
            "etr_hub_completion_tokens", "Completion tokens by model", ["model"], registry=r
        )
        self.routes = Counter(
            "etr_hub_route_decisions",
            "Routed answers by the expert that took over ('meta': none)",
            ["expert"],
            registry=r,
        )
        self.fallbacks = Counter(
            "etr_hub_fallbacks",
            "Experts that failed mid-answer, the meta model finishing",
            ["expert", "reason"],
            registry=r,
        )
        self.ttft = Histogram(
            "etr_hub_time_to_first_token_seconds",
            "From the request's arrival to its first answer token",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.switch_latency = Histogram(
            "etr_hub_switch_latency_seconds",
            "From the route switch to the expert's first token (its loading included)",
            ["expert"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_HubState(service))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def finish(self, trace: Trace) -> None:
        """Count a request that is over, and log it."""
        ended = time.monotonic()
        status = trace.status or 500
        endpoint = trace.endpoint if trace.endpoint in ENDPOINTS else "other"
        self.requests.labels(endpoint, trace.model, str(status)).inc()
        result = trace.result
        if result is not None:
            self.prompt_tokens.labels(trace.model).inc(result.prompt_tokens)
            self.completion_tokens.labels(trace.model).inc(result.completion_tokens)
            self._count_route(trace, result)
        if trace.first_token is not None:
            self.ttft.labels(endpoint).observe(trace.first_token - trace.started)
        for expert, seconds in trace.switch_latency.items():
            self.switch_latency.labels(expert).observe(seconds)
        request_log.info(json.dumps(self.log_record(trace, status, ended), ensure_ascii=False))

    def _count_route(self, trace: Trace, result: ChatResult) -> None:
        if trace.routed:  # a request that named an expert made no routing decision
            self.routes.labels(result.route[0].expert if result.route else META).inc()
        for switch in result.route:
            if switch.fell_back:
                self.fallbacks.labels(switch.expert, fallback_reason(switch.reason)).inc()

    def log_record(self, trace: Trace, status: int, ended: float) -> dict[str, Any]:
        result = trace.result
        record: dict[str, Any] = {
            "request_id": trace.request_id,
            "endpoint": trace.endpoint,
            "model": trace.model,
            "stream": trace.stream,
            "status": status,
            "route": None if result is None else _route(result),
            "timings_ms": trace.timings_ms(ended),
            "tokens": None if result is None else p.usage(result),
        }
        if trace.error:
            record["error"] = trace.error
        if self.log_prompts:
            record["prompt"] = trace.prompt
            record["answer"] = None if result is None else result.text
        return record


def fallback_reason(problem: str | None) -> str:
    """One of a few reasons (a Prometheus label must not hold free text: URLs, status bodies)."""
    text = (problem or "").lower()
    for words, reason in FALLBACK_REASONS:
        if any(w in text for w in words):
            return reason
    return "error"


def _route(result: ChatResult) -> dict[str, Any]:
    return {
        "expert": result.expert or META,
        "switches": [s.to_json() for s in result.route],
        "warnings": len(result.warnings),
    }


class RequestTrace:
    """ASGI middleware: a Trace for each /v1 request, finished once its response is all sent."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        trace = Trace(endpoint=path)
        scope.setdefault("state", {})["trace"] = trace

        async def send_traced(message: dict) -> None:
            if message["type"] == "http.response.start":
                trace.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_traced)
        finally:
            self.metrics.finish(trace)

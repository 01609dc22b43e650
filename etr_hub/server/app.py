"""The FastAPI app: OpenAI-compatible endpoints in front of one Hub.

POST /v1/chat/completions   routed answers (model = the hub's id), or one expert directly (model = its name)
POST /v1/completions        raw continuation by the meta model or an expert (what remote experts call)
GET  /v1/models             the hub, then each expert
GET  /health                liveness and queue depth (no key needed, nothing private)
GET  /metrics               Prometheus text format (behind the API key unless --metrics-public)

Every /v1 route sits on one APIRouter whose dependency checks the API key (FastAPI's global
dependencies); what the endpoints share (the hub, its worker, the settings) is a `Service` on
`app.state`, handed to them as a dependency.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from etr_hub.errors import EtrHubError
from etr_hub.runtime.types import Done, RouteWarning, Switch, TextDelta
from etr_hub.server import protocol as p
from etr_hub.server.config import ServerConfig
from etr_hub.server.metrics import Metrics, RequestTrace, Trace
from etr_hub.server.worker import END, Failed, HubWorker, Job, NotServing, QueueFull

log = logging.getLogger("etr_hub.server")

KEEPALIVE_S = 2.0  # an SSE comment while a stream waits in the queue (also notices a client that left)
POLL_S = 0.5  # how often a waiting non-streaming request checks that its client is still there


class Service:
    """What the endpoints share: the hub, the one worker that runs it, and the server's settings."""

    def __init__(self, hub: Any, config: ServerConfig):
        self.hub = hub
        self.config = config
        self.worker = HubWorker(hub, config.max_queue, threads=getattr(hub, "parallel", 1))
        self.experts = {e.name: e for e in hub.experts}
        self.created = p.now()
        self.metrics = Metrics(self, log_prompts=config.log_prompts)

    async def read_json(self, request: Request) -> Any:
        """The body, refused (413) past --max-body-kb before it is all read."""
        limit = self.config.max_body_bytes
        too_big = p.ApiError(413, f"request body over {limit} bytes", code="request_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_big
        return p.decode_json(bytes(body))

    async def check_prompt_length(self, count: Callable[[], int], param: str) -> None:
        """Refuse an over-long prompt before it waits for (and then holds) the one worker."""
        try:
            n = await asyncio.to_thread(count)  # tokenizing up to --max-body-kb must not stall the event loop
        except EtrHubError as exc:
            raise p.ApiError(400, str(exc), param=param) from None
        limit = self.config.max_prompt_tokens
        if n > limit:
            raise p.ApiError(
                400,
                f"the prompt is {n:,} tokens; this server takes at most {limit:,} (--max-prompt-tokens)",
                code="context_length_exceeded",
                param=param,
            )

    def expert_for(self, model: str) -> str | None:
        """The expert a request names, None for the hub (routed); 404 for anything else."""
        if model == self.config.model_id:
            return None
        if model in self.experts:
            return model
        raise p.ApiError(
            404,
            f"the model '{model}' does not exist; see GET /v1/models (the hub is '{self.config.model_id}')",
            code="model_not_found",
            param="model",
        )

    def submit(self, request: Request, call: Callable[[Any], Any]) -> Job:
        """Queue `call(hub)` for the worker: 429 when the queue is full, 503 while shutting down."""
        trace = _trace(request)
        job = Job(call, client=request.client.host if request.client else "?", loop=asyncio.get_running_loop())
        job.trace = trace
        if trace is not None:
            trace.job = job
        try:
            self.worker.submit(job)
        except QueueFull as full:
            raise p.ApiError(
                429,
                f"the server is busy ({self.config.max_queue} requests waiting); retry after {full.retry_after} s",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(full.retry_after)},
            ) from None
        except NotServing:
            raise p.ApiError(
                503,
                "the server is shutting down",
                type="server_error",
                code="unavailable",
                headers={"Retry-After": "5"},
            ) from None
        return job

    def model_list(self) -> dict[str, Any]:
        hub_entry = {"id": self.config.model_id, "etr_kind": "hub", "etr_meta": self.hub.meta_name}
        experts = [
            {
                "id": e.name,
                "etr_kind": "expert",
                "etr_backend": e.backend,
                "etr_version": e.version,
                "etr_label": e.label,
            }
            for e in self.hub.experts
        ]
        data = [_model_entry(entry, self.created) for entry in (hub_entry, *experts)]
        return {"object": "list", "data": data}


def _model_entry(entry: dict[str, Any], created: int) -> dict[str, Any]:
    """One /v1/models entry: the OpenAI fields first, then etr-hub's own."""
    return {"id": entry["id"], "object": "model", "created": created, "owned_by": "etr-hub", **entry}


def service(request: Request) -> Service:
    return request.app.state.service


def _trace(request: Request) -> Trace | None:
    return getattr(request.state, "trace", None)


def _traced(request: Request, rid: str, model: str, *, stream: bool, routed: bool, prompt: Any) -> None:
    """Tell the request's trace (metrics, the request log) what was asked, under the response's id."""
    trace = _trace(request)
    if trace is not None:
        trace.request_id, trace.model, trace.stream, trace.routed, trace.prompt = rid, model, stream, routed, prompt


ServiceDep = Annotated[Service, Depends(service)]


async def authorize(request: Request) -> None:
    """The API key, when the server has one: 401 unless 'Authorization: Bearer KEY' matches."""
    key = service(request).config.api_key
    if not key:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest on bytes: the time taken does not depend on how much of the key matched
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise p.ApiError(
            401,
            "missing or wrong API key: send 'Authorization: Bearer KEY'",
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


public = APIRouter()
api = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])


@public.get("/health")
async def health(svc: ServiceDep):
    pool = svc.hub.pool
    return {"status": "ok", "queue": svc.worker.health(), "experts": pool.health.report(pool.clock())}


async def metrics(svc: ServiceDep) -> Response:
    body, content_type = svc.metrics.exposition()
    return Response(body, media_type=content_type)


@api.get("/models")
async def models(svc: ServiceDep):
    return svc.model_list()


@api.post("/chat/completions")
async def chat_completions(request: Request, svc: ServiceDep) -> Response:
    req = p.parse(p.ChatRequest, await svc.read_json(request))
    expert = svc.expert_for(req.model)
    settings = req.settings(svc.config.default_max_tokens, svc.config.max_tokens_limit)
    messages = _checked_messages(req.chat_messages())
    rid, now = p.new_id("chatcmpl"), p.now()
    _traced(request, rid, req.model, stream=req.stream, routed=expert is None, prompt=messages)
    await svc.check_prompt_length(lambda: svc.hub.prompt_tokens(messages), "messages")
    job = svc.submit(request, lambda h: h.chat(messages, stream=True, expert=expert, **settings))
    if req.stream:
        return _stream(job, _chat_events(job, rid, now, req.model, req.include_usage))
    return await _reply(job, request, lambda result: p.chat_response(rid, now, req.model, result))


@api.post("/completions")
async def completions(request: Request, svc: ServiceDep) -> Response:
    req = p.parse(p.CompletionRequest, await svc.read_json(request))
    expert = svc.expert_for(req.model)
    settings = req.settings(svc.config.default_max_tokens, svc.config.max_tokens_limit)
    rid, now = p.new_id("cmpl"), p.now()
    _traced(request, rid, req.model, stream=req.stream, routed=False, prompt=req.prompt)  # raw: never routed
    await svc.check_prompt_length(lambda: svc.hub.prompt_tokens(prompt=req.prompt), "prompt")
    job = svc.submit(request, lambda h: h.complete(req.prompt, stream=True, expert=expert, **settings))
    if req.stream:
        return _stream(job, _completion_events(job, rid, now, req.model, req.include_usage))
    return await _reply(job, request, lambda result: p.completion_response(rid, now, req.model, result))


def create_app(
    hub: Any, config: ServerConfig, while_serving: Callable[[], AbstractContextManager] | None = None
) -> FastAPI:
    """`while_serving`: a context held from start-up to shutdown (inside the lifespan, which runs
    before uvicorn re-raises a SIGTERM it caught; a `finally` around uvicorn's run would not)."""
    svc = Service(hub, config)

    @asynccontextmanager
    async def lifespan(_app):
        svc.worker.start()
        with while_serving() if while_serving else nullcontext():
            yield
        svc.worker.stop()

    app = FastAPI(title="etr-hub", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc
    if config.cors_origins:
        _allow_cors(app, config.cors_origins)
    _add_error_handlers(app)
    app.include_router(public)
    app.include_router(api)
    auth = [] if config.metrics_public else [Depends(authorize)]
    app.add_api_route("/metrics", metrics, methods=["GET"], dependencies=auth, include_in_schema=False)
    app.add_middleware(RequestTrace, metrics=svc.metrics)
    return app


def _allow_cors(app: FastAPI, origins: tuple[str, ...]) -> None:
    from fastapi.middleware.cors import CORSMiddleware

    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["X-ETR-Route", "Retry-After"],
    )


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape: ours (ApiError), routing's (404, 405) and bugs (500, logged)."""

    @app.exception_handler(p.ApiError)
    async def _api_error(_request, exc: p.ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(_request, exc: Exception):
        log.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return JSONResponse(
            p.error_body("internal server error (see the server's log)", type="server_error"), status_code=500
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(p.error_body(str(exc.detail), code=code), status_code=exc.status_code)


async def _result_of(job: Job, request: Request) -> Any:
    """Wait for a non-streaming answer; if the client leaves first, free its slot."""
    result = None
    try:
        while True:
            try:
                item = await asyncio.wait_for(job.events.get(), POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return None
                continue
            if item is END:
                return result
            job.see(item)
            if isinstance(item, Done):
                result = item.result
            elif isinstance(item, Failed):
                raise _failure(item)
    finally:
        job.cancel()  # a no-op once the job finished


async def _reply(job: Job, request: Request, body: Callable[[Any], dict]) -> Response:
    """The finished answer as one JSON response, its route in the X-ETR-Route header."""
    result = await _result_of(job, request)
    if result is None:
        return Response(status_code=499)  # the client is gone; nobody reads this
    return JSONResponse(body(result), headers={"X-ETR-Route": p.route_header(result)})


def _stream(job: Job, items: AsyncGenerator[str, None]) -> StreamingResponse:
    return _JobStream(
        job, items, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


class _JobStream(StreamingResponse):
    """A streaming response that frees its job's slot however it ends (done, error, client gone)."""

    def __init__(self, job: Job, items: AsyncGenerator[str, None], **kw: Any):
        super().__init__(items, **kw)
        self.job, self.items = job, items

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()
            await self.items.aclose()


def _checked_messages(messages: list[dict]) -> list[dict]:
    from etr_hub.runtime.hub import check_messages

    try:
        return check_messages(messages)
    except EtrHubError as exc:
        raise p.ApiError(400, str(exc), param="messages") from None


def _failure(item: Failed) -> p.ApiError:
    kind = "invalid_request_error" if item.status < 500 else "server_error"
    return p.ApiError(item.status, item.message, type=kind)


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def _events(job: Job) -> AsyncIterator[Any]:
    """The job's events as they come; an SSE comment (None) while nothing arrives."""
    while True:
        try:
            item = await asyncio.wait_for(job.events.get(), KEEPALIVE_S)
        except TimeoutError:
            yield None
            continue
        if item is END:
            return
        job.see(item)
        yield item


async def _chat_events(job: Job, rid: str, created: int, model: str, include_usage: bool) -> AsyncGenerator[str, None]:
    chunk = functools.partial(p.chat_chunk, rid, created, model)
    yield _sse(chunk({"role": "assistant", "content": ""}))
    usage = functools.partial(p.usage_chunk, rid, created, model, "chat.completion.chunk") if include_usage else None
    async for line in _sse_events(job, chunk, lambda text: {"delta": {"content": text}}, usage, warnings=True):
        yield line


async def _completion_events(
    job: Job, rid: str, created: int, model: str, include_usage: bool
) -> AsyncGenerator[str, None]:
    chunk = functools.partial(p.completion_chunk, rid, created, model)
    usage = functools.partial(p.usage_chunk, rid, created, model, "text_completion") if include_usage else None
    async for line in _sse_events(job, chunk, lambda text: {"text": text}, usage, warnings=False):
        yield line


async def _sse_events(
    job: Job,
    chunk: Callable[..., dict],
    text: Callable[[str], dict],
    usage: Callable[[Any], dict] | None,
    *,
    warnings: bool,
) -> AsyncGenerator[str, None]:
    """The job's events as one endpoint's SSE chunks: `chunk(**fields)` builds a chunk, `text(t)` the
    fields that carry text, `usage(result)` the closing usage chunk when the client asked for it."""
    async for item in _events(job):
        if item is None:
            yield ": waiting\n\n"
        elif isinstance(item, TextDelta):
            yield _sse(chunk(**text(item.text), etr_source=item.source))
        elif isinstance(item, Switch):
            yield _sse(chunk(etr_switch=item.switch.to_json()))
        elif isinstance(item, RouteWarning) and warnings:
            yield _sse(chunk(etr_warning=item.message))
        elif isinstance(item, Done):
            yield _sse(chunk(finish=item.result.finish_reason, etr_route=p.route_record(item.result)))
            if usage is not None:
                yield _sse(usage(item.result))
        elif isinstance(item, Failed):
            yield _sse(_failure(item).body())
    yield _sse("[DONE]")

"""`etr-hub serve`: the hub as an OpenAI-compatible HTTP server (chat, completions, models)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from etr_hub.cli.common import open_hub
from etr_hub.cli.options import DeviceOption, DtypeOption, MemoryBudgetOption, MinPOption
from etr_hub.cli.output import err, lit, note, warn
from etr_hub.config import API_KEY


class Fallback(StrEnum):
    meta = "meta"
    next_expert = "next-expert"


class LogLevel(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


Host = Annotated[
    str,
    typer.Option("--host", help="Address to listen on. Anything but loopback needs --api-key (or --insecure)."),
]
Port = Annotated[int, typer.Option("--port", help="Port to listen on.")]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar=API_KEY,
        show_envvar=True,
        help=(
            "Require 'Authorization: Bearer KEY' on every /v1 request. Prefer the environment variable: a command "
            "line is visible to other users."
        ),
    ),
]
Insecure = Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without an API key.")]
MaxQueue = Annotated[
    int, typer.Option("--max-queue", help="Requests that may wait for the meta model; more get 429 + Retry-After.")
]
MaxTokens = Annotated[int, typer.Option("--max-tokens", min=1, help="The largest max_tokens a request may ask for.")]
MaxPromptTokens = Annotated[
    int,
    typer.Option(
        "--max-prompt-tokens",
        min=1,
        help=(
            "The longest prompt a request may send, in the meta model's tokens (chat template included); longer ones "
            "get 400 before they wait for the model."
        ),
    ),
]
MaxBodyKb = Annotated[int, typer.Option("--max-body-kb", min=1, help="The largest request body, in KiB (413 above).")]
CorsOrigin = Annotated[
    list[str] | None,
    typer.Option("--cors-origin", help="Allow browser pages from this origin (repeatable). CORS is off without it."),
]
ModelName = Annotated[
    str, typer.Option("--model-name", help="The hub's model id in /v1/models (experts are listed by name).")
]
MetricsPublic = Annotated[
    bool,
    typer.Option(
        "--metrics-public", help="Serve GET /metrics without the API key (for a scraper on a trusted network)."
    ),
]
LogPrompts = Annotated[
    bool,
    typer.Option(
        "--log-prompts", help="Put each request's prompt and answer in its JSON request log line (left out by default)."
    ),
]
LogLevelOption = Annotated[
    LogLevel,
    typer.Option(
        "--log-level",
        help="Log level of uvicorn and the JSON request log (info): critical, error, warning, info, debug.",
    ),
]

FailuresBeforeCooldown = Annotated[
    int,
    typer.Option(
        "--failures-before-cooldown",
        help="A remote expert that fails this many times in a row leaves routing for --cooldown-s (3).",
    ),
]
MetaUrl = Annotated[
    str | None,
    typer.Option(
        "--meta-url",
        help=(
            "Route only: the meta model runs in an OpenAI-compatible engine at this /v1 URL, serving the checkpoint "
            "`etr-hub export meta` wrote (this server then holds no model weights). Needs --meta-export."
        ),
    ),
]
MetaModel = Annotated[
    str | None,
    typer.Option("--meta-model", help="The engine's name for the exported checkpoint (default: the one it lists)."),
]
MetaExport = Annotated[
    Path | None,
    typer.Option(
        "--meta-export",
        help="The folder `etr-hub export meta` wrote (its etr_hub_export.json and tokenizer; weights not needed).",
    ),
]
CooldownS = Annotated[
    float,
    typer.Option("--cooldown-s", help="Seconds a failing remote expert stays out of routing before a probe (30)."),
]
FallbackOption = Annotated[
    Fallback,
    typer.Option(
        "--fallback",
        help="Who answers a question whose expert is cooling down: the meta model, or the next-best token.",
    ),
]


def serve(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    api_key: ApiKey = None,
    insecure: Insecure = False,
    max_queue: MaxQueue = 16,
    max_tokens: MaxTokens = 2048,
    max_prompt_tokens: MaxPromptTokens = 400,
    max_body_kb: MaxBodyKb = 1024,
    cors_origin: CorsOrigin = None,
    model_name: ModelName = "etr-hub",
    memory_budget_mb: MemoryBudgetOption = None,
    metrics_public: MetricsPublic = False,
    log_prompts: LogPrompts = False,
    log_level: LogLevelOption = LogLevel.info,
    failures_before_cooldown: FailuresBeforeCooldown = 3,
    cooldown_s: CooldownS = 30.0,
    min_p: MinPOption = None,
    fallback: FallbackOption = Fallback.meta,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    meta_url: MetaUrl = None,
    meta_model: MetaModel = None,
    meta_export: MetaExport = None,
) -> None:
    """Serve the meta model and its experts over the OpenAI API (POST /v1/chat/completions, /v1/completions, GET /v1/models)."""  # noqa: E501 - one line: rich help keeps a docstring's line breaks
    from etr_hub.backends.health import HealthPolicy
    from etr_hub.server.config import ServerConfig

    _require_web_stack()
    from etr_hub.server.runner import check_port_free
    from etr_hub.server.runner import serve as run

    config = ServerConfig(
        host=host,
        port=port,
        api_key=api_key or None,
        insecure=insecure,
        max_queue=max_queue,
        max_tokens_limit=max_tokens,
        max_prompt_tokens=max_prompt_tokens,
        max_body_bytes=max_body_kb * 1024,
        cors_origins=tuple(cors_origin or ()),
        model_id=model_name,
        metrics_public=metrics_public,
        log_prompts=log_prompts,
    ).check()
    health: dict[str, Any] = {"failures_before_cooldown": failures_before_cooldown, "cooldown_s": cooldown_s}
    HealthPolicy(**health).check()  # before the slow part
    check_port_free(config.host, config.port)
    where = _meta_placement(meta_url, meta_model, meta_export, device, dtype)
    hub = open_hub(
        memory_budget_mb=memory_budget_mb, plain_note=False, min_p=min_p, fallback=fallback.value, **health, **where
    )
    _announce(hub, config)
    from etr_hub.config import settings

    run(hub, config, log_level=log_level.value, home=settings().home)  # `expert list` finds it in home/servers


def _meta_placement(meta_url, meta_model, meta_export, device, dtype) -> dict[str, Any]:
    """Where the meta model runs: in this process (--device/--dtype) or in an engine (--meta-url)."""
    if meta_url is None and (meta_model is not None or meta_export is not None):
        raise typer.BadParameter("--meta-model and --meta-export go with --meta-url", param_hint="--meta-url")
    if meta_url is None:
        return {"device": device, "dtype": dtype}
    if device is not None or dtype is not None:
        raise typer.BadParameter(
            "the engine at --meta-url holds the meta model: drop --device/--dtype", param_hint="--device"
        )
    return {"meta_url": meta_url, "meta_model": meta_model, "meta_export": meta_export}


def _require_web_stack() -> None:
    import importlib.util

    from etr_hub.errors import EtrHubError

    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise EtrHubError(
            f"etr-hub serve needs {' and '.join(missing)}, which are not installed", "pip install 'etr-hub[serve]'"
        )


def _announce(hub, config) -> None:
    """What is served where, on stderr; a warning when a public address has no key."""
    host, port = config.host, config.port
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/v1"
    names = ", ".join(e.name for e in hub.experts) or "none"
    err.print(
        f"serving [bold]{lit(config.model_id)}[/bold] ({lit(hub.meta_name)}) with {len(hub.experts)} expert(s): "
        f"{lit(names)}",
        highlight=False,
    )
    note(
        f"OpenAI base URL: {url} · API key {'required' if config.api_key else 'not required'} · queue "
        f"{config.max_queue} · metrics at /metrics{' (public)' if config.metrics_public else ''} · Ctrl-C stops"
    )
    if not config.api_key and host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"serving on {host} without an API key (--insecure)")

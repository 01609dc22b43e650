"""`etr-hub serve`: the hub as an OpenAI-compatible HTTP server (chat, completions, models)."""

from __future__ import annotations

import typer

from etr_hub.cli.checks import one_of
from etr_hub.cli.common import open_hub
from etr_hub.cli.output import err, lit, note, warn


def serve(
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on. Anything but loopback needs --api-key (or --insecure)."
    ),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar="ETR_HUB_API_KEY",
        show_envvar=True,
        help="Require 'Authorization: Bearer KEY' on every /v1 request. Prefer the environment variable: a command line is visible to other users.",
    ),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without an API key."),
    max_queue: int = typer.Option(
        16, "--max-queue", help="Requests that may wait for the meta model; more get 429 + Retry-After."
    ),
    max_tokens: int = typer.Option(2048, "--max-tokens", min=1, help="The largest max_tokens a request may ask for."),
    max_prompt_tokens: int = typer.Option(
        400,
        "--max-prompt-tokens",
        min=1,
        help="The longest prompt a request may send, in the meta model's tokens (chat template included); longer ones get 400 before they wait for the model.",
    ),
    max_body_kb: int = typer.Option(1024, "--max-body-kb", min=1, help="The largest request body, in KiB (413 above)."),
    cors_origin: list[str] = typer.Option(
        None, "--cors-origin", help="Allow browser pages from this origin (repeatable). CORS is off without it."
    ),
    model_name: str = typer.Option(
        "etr-hub", "--model-name", help="The hub's model id in /v1/models (experts are listed by name)."
    ),
    memory_budget_mb: int = typer.Option(
        None, "--memory-budget-mb", min=0, help="Memory for loaded experts (default: half the RAM)."
    ),
    log_level: str = typer.Option(
        "info",
        "--log-level",
        callback=one_of("critical", "error", "warning", "info", "debug", "trace"),
        help="uvicorn log level: critical, error, warning, info, debug.",
    ),
) -> None:
    """Serve the meta model and its experts over the OpenAI API (POST /v1/chat/completions, /v1/completions, GET /v1/models)."""
    import importlib.util

    from etr_hub.errors import EtrHubError
    from etr_hub.server.config import ServerConfig

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise EtrHubError(
            f"etr-hub serve needs {' and '.join(missing)}, which are not installed", "pip install 'etr-hub[serve]'"
        )
    from etr_hub.server.runner import check_port_free

    config = ServerConfig(
        host=host,
        port=port,
        api_key=api_key or None,
        insecure=insecure,
        max_queue=max_queue,
        max_tokens_limit=max_tokens,
        max_prompt_tokens=max_prompt_tokens,
        max_body_bytes=max_body_kb * 1024,
        cors_origins=tuple(cor for cor in cors_origin or ()),
        model_id=model_name,
    ).check()
    check_port_free(config.host, config.port)  # before the slow part
    hub = open_hub(memory_budget_mb=memory_budget_mb, plain_note=False)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/v1"
    names = ", ".join(e.name for e in hub.experts) or "none"
    err.print(
        f"serving [bold]{lit(config.model_id)}[/bold] ({lit(hub.meta_name)}) with {len(hub.experts)} expert(s): {lit(names)}",
        highlight=False,
    )
    note(
        f"OpenAI base URL: {url} · API key {'required' if config.api_key else 'not required'} · queue {config.max_queue} · Ctrl-C stops"
    )
    if not config.api_key and host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"serving on {host} without an API key (--insecure)")

    from etr_hub.server.runner import serve as run

    run(hub, config, log_level=log_level)

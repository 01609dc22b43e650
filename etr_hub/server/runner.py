"""Run the app under uvicorn (one process; the Hub's worker thread does the model work)."""

from __future__ import annotations

import errno
import logging
import socket
import sys
from pathlib import Path
from typing import Any

from etr_hub.errors import EtrHubError
from etr_hub.server.config import ServerConfig


def check_port_free(host: str, port: int) -> None:
    """Fail before loading any model if the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            s.bind((host.strip("[]"), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EtrHubError(
                    f"port {port} on {host} is already in use", "pass another --port, or stop the other server"
                ) from None
            raise EtrHubError(f"cannot listen on {host}:{port} ({exc.strerror})", "check --host") from None


def serve(hub: Any, config: ServerConfig, *, log_level: str = "info", home: Path | None = None) -> None:
    """`home`: announce the server's URL in home/servers/ while it runs (`etr-hub expert list` reads it)."""
    import uvicorn

    from etr_hub.server.app import create_app
    from etr_hub.server.discovery import announced, local_url

    url = local_url(config.host, config.port)
    app = create_app(hub, config, (lambda: announced(home, url)) if home is not None else None)
    _log_requests(log_level)
    uv = uvicorn.Config(
        app,
        host=config.host.strip("[]"),
        port=config.port,
        log_level=log_level,
        access_log=True,
        server_header=False,
        # a last guard against connection floods: the fair queue answers 429 long before this
        limit_concurrency=max(64, 4 * config.max_queue + 16),
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(uv).run()


def _log_requests(log_level: str) -> None:
    """The request log ("etr_hub.requests": one JSON line per request, at INFO) on stderr, beside uvicorn's;
    --log-level warning and above silence it."""
    logger = logging.getLogger("etr_hub.requests")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    level = logging.getLevelName(log_level.upper())
    logger.setLevel(level if isinstance(level, int) else logging.DEBUG)  # uvicorn's "trace" is below DEBUG

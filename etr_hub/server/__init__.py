"""`etr-hub serve`: an OpenAI-compatible HTTP server in front of one Hub.

    from etr_hub.server import ServerConfig, create_app
    app = create_app(hub, ServerConfig(api_key="…"))   # a FastAPI app; run it with uvicorn

Web libraries are imported lazily: `import etr_hub.server` stays cheap.
"""

from __future__ import annotations

from etr_hub.server.config import DEFAULT_MODEL_ID, ServerConfig, is_loopback


def create_app(hub, config: ServerConfig):
    from etr_hub.server.app import create_app as _create

    return _create(hub, config)


__all__ = ["DEFAULT_MODEL_ID", "ServerConfig", "create_app", "is_loopback"]

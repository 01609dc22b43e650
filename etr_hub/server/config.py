"""Server settings and the security policy checked before anything listens (no web imports)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from etr_hub.errors import EtrHubError
from etr_hub.runtime.options import DEFAULT_MAX_NEW_TOKENS

DEFAULT_MODEL_ID = "etr-hub"  # the generalist (meta model + experts, routed) in /v1/models


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)  # never printed or logged
    insecure: bool = False
    max_queue: int = 16  # requests waiting for the meta model (the running one not counted)
    max_body_bytes: int = 1 << 20
    max_tokens_limit: int = 2048  # the largest max_tokens a request may ask for
    default_max_tokens: int = DEFAULT_MAX_NEW_TOKENS
    max_prompt_tokens: int = 400  # longer prompts get 400 before they wait: one would hold the only worker
    cors_origins: tuple[str, ...] = ()
    model_id: str = DEFAULT_MODEL_ID
    metrics_public: bool = False  # GET /metrics without the API key
    log_prompts: bool = False  # the request log's JSON lines carry the prompt and the answer

    def check(self) -> ServerConfig:
        if not 0 < self.port < 65536:
            raise EtrHubError(f"port {self.port} is out of range", "pass --port between 1 and 65535")
        if self.api_key is not None and (not self.api_key.strip() or self.api_key != self.api_key.strip()):
            what = "blank" if not self.api_key.strip() else "surrounded by whitespace (no client could send it)"
            raise EtrHubError(
                f"the API key is {what}",
                "set ETR_HUB_API_KEY (or --api-key) to a real secret, e.g. $(openssl rand -hex 24)",
            )
        if self.max_prompt_tokens < 1:
            raise EtrHubError(
                f"--max-prompt-tokens must be at least 1 (got {self.max_prompt_tokens})",
                "pass e.g. --max-prompt-tokens 400",
            )
        if self.max_queue < 1:
            raise EtrHubError(f"--max-queue must be at least 1 (got {self.max_queue})", "pass e.g. --max-queue 16")
        if not self.api_key and not is_loopback(self.host) and not self.insecure:
            raise EtrHubError(
                f"refusing to serve on {self.host} without an API key: anyone who can reach it could use it",
                "pass --api-key KEY (or set ETR_HUB_API_KEY), or --insecure if the network is trusted",
            )
        if "*" in self.cors_origins and self.api_key is None and not self.insecure:
            raise EtrHubError(
                "--cors-origin '*' without an API key lets any web page use this server",
                "name the origin, or add --api-key",
            )
        return self


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and 'localhost' only: any other name could resolve off the machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

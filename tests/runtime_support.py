"""Helpers for the runtime tests: lively tiny models, hand-set expert rows, a real
OpenAI-compatible completions server on 127.0.0.1, and a no-cache greedy reference decoder."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from etr_hub.bundle.io import write_token_bundle
from etr_hub.bundle.manifest import MetaInfo, Sampling
from etr_hub.models.refs import ModelRef
from tests.tiny_models import make_tiny_llama

QUESTION = [{"role": "user", "content": "tell me about the stars"}]


def lively_llama(path: Path, seed: int = 0, chat_template: bool = True) -> Path:
    """make_tiny_llama with larger random weights: at the default init a tiny model with tied
    embeddings just repeats its last input token, which would make hand-over tests vacuous."""
    from transformers import AutoModelForCausalLM

    path = make_tiny_llama(path, seed=seed, chat_template=chat_template)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, local_files_only=True)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=gen) * (1.0 if "embed" in name else 0.3))
    model.save_pretrained(path)
    return path


def add_expert(
    registry,
    name: str,
    row: torch.Tensor,
    expert: ModelRef,
    *,
    fingerprint: str,
    hidden: int,
    adapter: Path | None = None,
    vocab: int = 272,
    allow_env: tuple[str, ...] = (),
    sampling: dict | None = None,
):
    """Write a bundle whose token is `row` (1, hidden) and register it (`allow_env`: as --allow-env;
    `sampling`: the manifest's declared decoding)."""
    files = {}
    if adapter is not None:
        files["adapter"] = adapter
        expert = ModelRef(kind="peft", path="adapter")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_token_bundle(
            Path(tmp) / name,
            row.reshape(1, hidden),
            files=files,
            name=name,
            license="Apache-2.0",
            provider="tests",
            label=name,
            expert=expert,
            meta=MetaInfo(reference="tiny", hidden_size=hidden, vocab_size=vocab, fingerprint=fingerprint),
            **({"sampling": Sampling(**sampling)} if sampling else {}),
        )
        return registry.add_expert(bundle, allow_env=allow_env)


@torch.no_grad()
def routing_states(model, ids: list[int]) -> torch.Tensor:
    """(T, C) last hidden states of every position, without a cache."""
    return model.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state[0].double()


def row_winning_at(states: torch.Tensor, k: int, margin: float = 500.0) -> torch.Tensor:
    """A W_E row orthogonal to states[:k] (logit 0 there) with logit `margin` at states[k]."""
    target = states[k]  # (C,)
    if k > 0:
        q, _ = torch.linalg.qr(states[:k].T)  # (C, k) orthonormal basis of the earlier states
        target = target - q @ (q.T @ target)
    return (target * (margin / float(target @ states[k]))).float().reshape(1, -1)  # (1, C)


@torch.no_grad()
def greedy_no_cache(model, ids: list[int], max_new: int, eos: set[int]) -> list[int]:
    """Reference decoding: the whole sequence re-encoded every step."""
    ids, out = list(ids), []
    for _ in range(max_new):
        token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        out.append(token)
        if token in eos:
            break
        ids.append(token)
    return out


class CompletionsServer:
    """A real OpenAI-compatible /v1 server on 127.0.0.1 (stdlib HTTP, one thread per request)
    that answers every completion with `reply`, streamed as SSE chunks when asked to stream.
    With `api_key`, every request without `Authorization: Bearer <api_key>` gets HTTP 401."""

    def __init__(
        self,
        reply: str = " the remote expert speaks",
        *,
        delay_s: float = 0.0,
        api_key: str | None = None,
        port: int = 0,
    ):
        self.reply, self.delay_s, self.requests, self.api_key = reply, delay_s, [], api_key
        self.authorizations: list[str | None] = []  # the Authorization header of every request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _authorized(self) -> bool:
                server.authorizations.append(self.headers.get("Authorization"))
                if server.api_key is None or self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                self._send(401, "application/json", json.dumps({"error": {"message": "invalid api key"}}).encode())
                return False

            def do_GET(self):
                if not self._authorized():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200,
                        "application/json",
                        json.dumps({"object": "list", "data": [{"id": "tiny-remote"}]}).encode(),
                    )
                else:
                    self._send(404, "application/json", b"{}")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._authorized():
                    return
                server.requests.append(body)
                time.sleep(server.delay_s)
                words = [w + " " for w in server.reply.split(" ")]
                words[-1] = words[-1][:-1]
                if body.get("stream"):
                    events = b"".join(
                        b"data: "
                        + json.dumps({"choices": [{"text": w, "index": 0, "finish_reason": None}]}).encode()
                        + b"\n\n"
                        for w in words
                    )
                    events += (
                        b"data: "
                        + json.dumps({"choices": [{"text": "", "index": 0, "finish_reason": "stop"}]}).encode()
                        + b"\n\ndata: [DONE]\n\n"
                    )
                    self._send(200, "text/event-stream", events)
                else:
                    payload = {
                        "choices": [{"text": server.reply, "index": 0, "finish_reason": "stop"}],
                        "usage": {"completion_tokens": len(words)},
                    }
                    self._send(200, "application/json", json.dumps(payload).encode())

            def _send(self, code, ctype, data):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_completions_forever(port: int) -> None:
    """The body of a separate server process (`python -c`): a CompletionsServer on `port` until killed."""
    with CompletionsServer(" the remote expert speaks", port=port) as server:
        server.thread.join()


def start_completions_process(port: int):
    """A CompletionsServer in its own process on 127.0.0.1:`port`, answering GET /v1/models when this returns."""
    import subprocess
    import sys
    import urllib.request

    code = "import sys; from tests.runtime_support import serve_completions_forever as s; s(int(sys.argv[1]))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(port)], cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the completions server on port {port} did not start") from None
            time.sleep(0.05)


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def meta_and_winning_row(registry, tmp_path):
    """A tiny meta model registered in `registry`, and an expert row that wins at QUESTION's first token."""
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.registry.meta import register_meta_model

    path = lively_llama(tmp_path / "meta")
    ref = ModelRef(kind="local", path=str(path))
    meta_row = register_meta_model(registry, ref)
    meta = load_causal_lm(ref)
    prompt = routing_prompt_ids(meta.tokenizer, QUESTION)[0]
    return path, meta_row, row_winning_at(routing_states(meta.model, prompt)[len(prompt) - 1 :], 0)

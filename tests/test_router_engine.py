"""A router that holds no weights (`Hub.open(meta_url=…)`, `etr-hub serve --meta-url`) in front of
a real engine: `transformers serve` on 127.0.0.1 serving the checkpoint `etr-hub export meta` wrote.

The tiny meta model's expert row is solved for (least squares) so that it wins at the routing
position of ROUTED and loses at every position of the meta model's own greedy answer to PLAIN: the
in-process hub and the router must then give the same routes and the same greedy answers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch

from etr_hub.errors import EtrHubError
from etr_hub.models.refs import ModelRef
from tests.helpers import invoke
from tests.runtime_support import (
    CompletionsServer,
    add_expert,
    closed_port,
    greedy_no_cache,
    lively_llama,
    routing_states,
)

ROUTED = [{"role": "user", "content": "tell me about the stars"}]
PLAIN = [{"role": "user", "content": "hello there"}]
LATER = [
    {"role": "user", "content": "what about the moon"}
]  # the expert token loses at the routing position, wins at 3
GREEDY = {"temperature": 0, "repetition_penalty": 1.0, "max_new_tokens": 10}
REPLY = " the remote expert speaks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def solved_row(meta_path: Path) -> torch.Tensor:
    """(1, C): logit above every word's at ROUTED's routing position, -100 along PLAIN's greedy answer, and
    for LATER -100 at the routing position but above every word where its greedy answer's 4th token is read
    (served raw, the engine emits the expert token there; the hub's routing window ignores it)."""
    from etr_hub.generation.modelinfo import eos_ids
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.loading import load_causal_lm

    meta = load_causal_lm(ModelRef(kind="local", path=str(meta_path)), role="meta")
    q = routing_prompt_ids(meta.tokenizer, ROUTED)[0]
    p = routing_prompt_ids(meta.tokenizer, PLAIN)[0]
    answer = greedy_no_cache(meta.model, p, GREEDY["max_new_tokens"] + 2, set(eos_ids(meta.model, meta.tokenizer)))
    h_q = routing_states(meta.model, q)[-1:]  # (1, C)
    h_p = routing_states(meta.model, p + answer)[len(p) - 1 :]  # (T, C): every position PLAIN's answer is read at
    w_v = meta.model.get_output_embeddings().weight.T.double()  # (C, V)
    top_word = float((h_q @ w_v).max())
    lp = routing_prompt_ids(meta.tokenizer, LATER)[0]
    later = greedy_no_cache(meta.model, lp, 4, set())
    h_l = routing_states(meta.model, lp + later)[len(lp) - 1 :]  # (5, C): h_l[j] emits later[j]
    a = torch.cat([h_q, h_p, h_l[:1], h_l[3:4]])  # (1 + T + 2, C)
    later_top = float((h_l[3:4] @ w_v).max())
    b = torch.tensor([top_word + 30.0] + [-100.0] * len(h_p) + [-100.0, later_top + 30.0], dtype=a.dtype)
    return torch.linalg.lstsq(a, b.unsqueeze(1)).solution.T.float()  # (1, C)


def populate(registry, world) -> None:
    """The world's meta model and its remote expert, registered (same token bytes as exported)."""
    from etr_hub.registry.meta import register_meta_model

    meta_row = register_meta_model(registry, ModelRef(kind="local", path=str(world.meta)))
    expert = ModelRef(kind="openai", url=world.expert_url, model="tiny-remote", timeout_s=10)
    add_expert(registry, "astronomy", world.row, expert, fingerprint=meta_row.fingerprint, hidden=32)


def start_engine(folder: Path, port: int, *extra: str) -> subprocess.Popen:
    """`transformers serve` on 127.0.0.1:`port` serving `folder`, answering /health when this returns."""
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [exe, "serve", str(folder), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", *extra]
    log = folder.parent / f"engine-{port}.log"
    with open(log, "w") as out:  # the engine writes to its own copy of the descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"transformers serve did not start: {log.read_text()[-2000:]}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The exported checkpoint served by `transformers serve`, and the remote expert's server."""
    pytest.importorskip("fastapi")
    from etr_hub.registry import Registry
    from etr_hub.runtime.export import export_meta

    root = tmp_path_factory.mktemp("router")
    meta = lively_llama(root / "meta")
    with CompletionsServer(REPLY) as expert, pytest.MonkeyPatch.context() as mp:
        mp.setenv("ETR_HUB_HOME", str(root / "home"))
        mp.delenv("ETR_HUB_DATABASE_URL", raising=False)
        mp.setenv("ETR_HUB_ADMISSION_REPORT", "0")
        w = SimpleNamespace(meta=meta, row=solved_row(meta), expert_url=expert.url, expert=expert)
        registry = Registry.open()
        populate(registry, w)
        w.export = export_meta(root / "exported", registry=registry).out
        mp.undo()
        port = free_port()
        engine = start_engine(w.export, port)
        w.url, w.model = f"http://127.0.0.1:{port}/v1", str(w.export)
        try:
            yield w
        finally:
            engine.terminate()
            engine.wait(timeout=30)


def open_router(world, **kw):
    from etr_hub.runtime import Hub

    return Hub.open(meta_url=world.url, meta_export=world.export, **kw)


def test_router_matches_the_in_process_hub(world, registry):
    from etr_hub.runtime import Hub, Switch, TextDelta

    populate(registry, world)
    hub, router = Hub.open(), open_router(world)
    try:
        assert router.meta_name.startswith(world.model) and [e.name for e in router.experts] == ["astronomy"]
        for messages in (ROUTED, PLAIN):
            here, there = hub.chat(messages, **GREEDY), router.chat(messages, **GREEDY)
            # a byte-level random model may stop mid-character: the hub shows U+FFFD, the engine drops the bytes
            assert there.text == here.text.rstrip("\ufffd") and there.expert == here.expert, (here.text, there.text)
            assert [(s.expert, s.token_index) for s in there.route] == [(s.expert, s.token_index) for s in here.route]
            assert there.finish_reason == here.finish_reason and not there.warnings
        assert hub.chat(ROUTED, **GREEDY).text == REPLY  # routed: the remote expert wrote it
        assert hub.chat(PLAIN, **GREEDY).expert is None and hub.chat(PLAIN, **GREEDY).text  # the meta model answered
        events = list(router.chat(ROUTED, stream=True, **GREEDY))
        assert isinstance(events[0], Switch) and events[0].switch.expert == "astronomy"
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == REPLY
        assert router.meta._loaded is None  # the router never loaded the meta model's weights
        with pytest.raises(EtrHubError, match="hidden states"):
            router.explain("why?")
    finally:
        hub.close()
        router.close()


def test_an_expert_token_after_the_routing_window_does_not_cut_the_answer(world, registry):
    """Served raw the engine emits the expert token at LATER's 4th token; the router's answer is still the
    in-process hub's whole answer (expert tokens suppressed after the routing position), with no warning."""
    from etr_hub.runtime import Hub

    raw = httpx.post(
        f"{world.url}/chat/completions",
        json={"model": world.model, "messages": LATER, "max_tokens": 6, "temperature": 0},
        timeout=60,
    ).json()["choices"][0]["message"]["content"]
    assert "<|expert:astronomy|>" in raw, raw  # the case is real: the engine's own answer holds the token
    populate(registry, world)
    hub, router = Hub.open(), open_router(world)
    try:
        here, there = hub.chat(LATER, **GREEDY), router.chat(LATER, **GREEDY)
    finally:
        hub.close()
        router.close()
    assert here.route == [] and there.route == [] and not there.warnings, there.warnings
    assert there.text == here.text.rstrip("\ufffd") and len(there.text) > len(raw.split("<|expert:")[0])


def test_a_lora_expert_runs_in_the_router_on_the_meta_model(world, registry, tmp_path):
    """A LoRA expert needs the meta model's weights: the router loads them (once) and the expert answers
    exactly as in the in-process hub."""
    from etr_hub.registry.meta import register_meta_model
    from etr_hub.runtime import Hub
    from tests.tiny_models import make_tiny_lora

    meta_row = register_meta_model(registry, ModelRef(kind="local", path=str(world.meta)))
    adapter = make_tiny_lora(world.meta, tmp_path / "adapter", seed=3)
    add_expert(
        registry,
        "astronomy",
        world.row,
        ModelRef(kind="peft", path="adapter"),
        fingerprint=meta_row.fingerprint,
        hidden=32,
        adapter=adapter,
    )
    hub, router = Hub.open(), open_router(world)
    try:
        here, there = hub.chat(ROUTED, **GREEDY), router.chat(ROUTED, **GREEDY)
        assert router.meta._loaded is not None  # loaded for the adapter
    finally:
        hub.close()
        router.close()
    assert there.expert == here.expert == "astronomy" and not there.route[0].fell_back, there.warnings
    assert there.text == here.text and not there.warnings


def test_router_falls_back_to_the_engine_when_the_expert_fails(world, registry):
    """The expert is down: the engine's meta model answers (expert tokens suppressed), with a warning."""
    from etr_hub.registry.meta import register_meta_model

    meta_row = register_meta_model(registry, ModelRef(kind="local", path=str(world.meta)))
    down = ModelRef(kind="openai", url=f"http://127.0.0.1:{closed_port()}/v1", model="x", timeout_s=2)
    add_expert(registry, "astronomy", world.row, down, fingerprint=meta_row.fingerprint, hidden=32)
    router = open_router(world)
    try:
        result = router.chat(ROUTED, **GREEDY)
    finally:
        router.close()
    assert result.route[0].fell_back and "meta model finished" in " ".join(result.warnings)
    assert result.text and "<|expert:" not in result.text


def test_router_refuses_a_checkpoint_that_does_not_match_the_registry(world, registry, tmp_path):
    populate(registry, world)
    registry.set_enabled("astronomy", False)
    with pytest.raises(EtrHubError, match="'astronomy' is exported but not enabled"):
        open_router(world)
    registry.set_enabled("astronomy", True)
    other = tmp_path / "other-export"
    shutil.copytree(world.export, other)
    manifest = json.loads((other / "etr_hub_export.json").read_text())
    manifest["meta_fingerprint"] = "0" * 64
    (other / "etr_hub_export.json").write_text(json.dumps(manifest))
    from etr_hub.runtime import Hub

    with pytest.raises(EtrHubError, match="made from meta model 000000000000…"):
        Hub.open(meta_url=world.url, meta_export=other)
    with pytest.raises(EtrHubError, match="needs the exported checkpoint's folder"):
        Hub.open(meta_url=world.url)


def test_router_refuses_an_engine_that_does_not_serve_the_export(world, registry, tmp_path):
    """The engine serves the plain meta model (no expert tokens): `<|expert:astronomy|>` is many tokens there."""
    populate(registry, world)
    port = free_port()
    engine = start_engine(world.meta, port)
    try:
        from etr_hub.runtime import Hub

        with pytest.raises(EtrHubError, match="does not serve the exported expert tokens"):
            Hub.open(meta_url=f"http://127.0.0.1:{port}/v1", meta_export=world.export)
    finally:
        engine.terminate()
        engine.wait(timeout=30)


def test_router_bad_engines_fail_in_one_line(world, registry):
    populate(registry, world)
    r = invoke("serve", "--meta-url", f"http://127.0.0.1:{closed_port()}/v1", "--meta-export", str(world.export))
    assert r.returncode == 1 and "is unreachable" in r.stderr and "--meta-url" in r.stderr
    with CompletionsServer(REPLY, api_key="secret") as needs_key:  # answers 401 to everything
        r = invoke("serve", "--meta-url", needs_key.url, "--meta-export", str(world.export))
    assert r.returncode == 1 and "HTTP 401" in r.stderr
    r = invoke("serve", "--meta-url", world.url, "--meta-model", "nope", "--meta-export", str(world.export))
    assert r.returncode == 1 and "does not serve model 'nope'" in r.stderr
    assert invoke("serve", "--meta-export", str(world.export)).returncode == 2  # --meta-export without --meta-url


def test_serve_meta_url_answers_concurrent_clients_like_the_hub(world, registry, hub_home):
    """The real console script as a router: several clients at once, each answer the in-process one."""
    import openai

    from etr_hub.runtime import Hub

    populate(registry, world)
    hub = Hub.open()
    expected = {m[0]["content"]: hub.chat(m, **GREEDY).text for m in (ROUTED, PLAIN)}
    hub.close()
    port = free_port()
    env = {**os.environ, "ETR_HUB_HOME": str(hub_home)}
    exe = shutil.which("etr-hub", path=str(Path(sys.executable).parent)) or "etr-hub"
    args = ["serve", "--port", str(port), "--meta-url", world.url, "--meta-export", str(world.export)]
    with open(hub_home.parent / "router.log", "w") as log:
        server = subprocess.Popen([exe, *args], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (hub_home.parent / "router.log").read_text()
            time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)

        def ask(messages):
            out = client.chat.completions.create(
                model="etr-hub", messages=messages, max_tokens=10, temperature=0, extra_body={"repetition_penalty": 1}
            )
            return messages[0]["content"], out.choices[0].message.content, out.model_extra["etr_route"]

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, [ROUTED, PLAIN] * 3))
        for content, text, route in answers:
            assert text == expected[content].rstrip("\ufffd")
            assert route["expert"] == ("astronomy" if content == ROUTED[0]["content"] else None)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.skipif(not os.environ.get("ETR_HUB_TEST_META_URL"), reason="opt-in: ETR_HUB_TEST_META_URL")
def test_router_against_an_engine_given_in_the_environment(monkeypatch):
    """Opt-in: a router in front of your own engine (e.g. vLLM) serving an export of an existing registry:
    ETR_HUB_TEST_META_URL=http://HOST:PORT/v1 ETR_HUB_TEST_META_EXPORT=DIR ETR_HUB_TEST_META_HOME=HOME
    (the $ETR_HUB_HOME the export was made from). Its answers must match the in-process hub's (greedy)."""
    from etr_hub.runtime import Hub

    monkeypatch.setenv("ETR_HUB_HOME", os.environ["ETR_HUB_TEST_META_HOME"])
    router = Hub.open(meta_url=os.environ["ETR_HUB_TEST_META_URL"], meta_export=os.environ["ETR_HUB_TEST_META_EXPORT"])
    hub = Hub.open()
    try:
        for text in ("What causes the phases of the Moon?", "Tell me a fun fact about dogs."):
            here, there = hub.chat(text, **GREEDY), router.chat(text, **GREEDY)
            assert (there.expert, there.text) == (here.expert, here.text)
    finally:
        router.close()
        hub.close()

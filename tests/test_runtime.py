"""The Hub on tiny random models: forced routes, hand-over, backends, fallbacks, bad input.

Expert rows are hand-set (tests/runtime_support.row_winning_at) so that the expert token wins
exactly at generated token k, which makes every switch deterministic.
"""

from __future__ import annotations

import shutil
import time
from types import SimpleNamespace

import pytest
import torch

from etr_hub.errors import EtrHubError
from etr_hub.generation.modelinfo import eos_ids, unshared_bytes
from etr_hub.models.chat import plain_prompt, routing_prompt_ids, to_ids
from etr_hub.models.fingerprint import meta_fingerprint
from etr_hub.models.loading import load_causal_lm
from etr_hub.models.refs import ModelRef
from etr_hub.runtime import Done, Hub, RouteWarning, Switch, TextDelta
from tests.runtime_support import (
    QUESTION,
    CompletionsServer,
    add_expert,
    closed_port,
    greedy_no_cache,
    lively_llama,
    routing_states,
    row_winning_at,
    start_completions_process,
)
from tests.tiny_models import make_tiny_lora

MAX_NEW = 14


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """One tiny meta model (loaded once; tests check it is never modified), its own greedy answer
    to QUESTION with the hidden state behind every token, and LoRA adapters made on demand."""
    root = tmp_path_factory.mktemp("runtime-zoo")
    path = lively_llama(root / "meta")
    meta = load_causal_lm(ModelRef(kind="local", path=str(path)), role="meta")
    tok = meta.tokenizer
    prompt = routing_prompt_ids(tok, QUESTION)[0]
    eos = set(eos_ids(meta.model, tok))
    trajectory = greedy_no_cache(meta.model, prompt, MAX_NEW, eos)  # the meta model's own answer
    states = routing_states(meta.model, prompt + trajectory)[len(prompt) - 1 :]  # states[j] emits trajectory[j]
    adapters: dict[tuple, object] = {}

    def adapter(seed: int, layers: tuple[int, ...] | None = None):
        if (seed, layers) not in adapters:
            suffix = "" if layers is None else "-layers" + "_".join(map(str, layers))
            adapters[seed, layers] = make_tiny_lora(
                path, root / f"lora-{seed}{suffix}", seed=seed, layers=None if layers is None else list(layers)
            )
        return adapters[seed, layers]

    return SimpleNamespace(
        path=path,
        meta=meta,
        fp=meta_fingerprint(meta.model),
        hidden=32,
        tok=tok,
        prompt=prompt,
        eos=eos,
        trajectory=trajectory,
        states=states,
        adapter=adapter,
        root=root,
    )


@pytest.fixture
def tiny(zoo, registry, tmp_path):
    """The zoo's meta model registered in this test's own registry."""
    registry.register_meta(
        reference={"kind": "local", "path": str(zoo.path)},
        display="tiny-meta",
        fingerprint=zoo.fp,
        hidden_size=zoo.hidden,
        vocab_size=272,
    )
    return SimpleNamespace(**vars(zoo), registry=registry, tmp=tmp_path)


def decode(tok, ids):
    return tok.decode([i for i in ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)


def open_hub(t, **kw) -> Hub:
    kw.setdefault("route_window", None)  # these tests force switches mid-answer (Algorithm 1 as is)
    return Hub.open(t.registry, meta=t.meta, **kw)


def lora_expert(t, name="astro", k=3, seed=1):
    adapter = t.adapter(seed)
    add_expert(
        t.registry,
        name,
        row_winning_at(t.states, k),
        ModelRef(kind="peft", path="adapter"),
        fingerprint=t.fp,
        hidden=t.hidden,
        adapter=adapter,
    )
    return adapter


def quiet_row(t):
    return torch.zeros(1, t.hidden)  # logit 0: never beats the best word token of this model


def switch_step(t, k=3):
    return min(k, len(t.trajectory) - 1)


# -- routed decoding ------------------------------------------------------------------------------
def test_plain_answer_equals_no_cache_greedy(tiny):
    hub = open_hub(tiny)
    assert hub.experts == [] and hub.skipped == [] and hub.meta_name  # no experts: a plain chat with the meta model
    result = hub.chat(QUESTION, max_new_tokens=MAX_NEW)
    assert result.text == decode(tiny.tok, tiny.trajectory)
    assert result.route == [] and result.expert is None
    ends_in_eos = tiny.trajectory[-1] in tiny.eos
    assert result.completion_tokens == len(tiny.trajectory) - ends_in_eos
    assert result.finish_reason == ("stop" if ends_in_eos else "length")
    assert result.prompt_tokens == len(tiny.prompt)


@pytest.mark.parametrize("kind", ["lora", "local-own-template"])
def test_forced_route_keeps_meta_text_and_expert_continues(tiny, kind):
    k = switch_step(tiny)
    row = row_winning_at(tiny.states, k)
    if kind == "lora":
        adapter = tiny.adapter(1)
        add_expert(
            tiny.registry,
            "astro",
            row,
            ModelRef(kind="peft", path="adapter"),
            fingerprint=tiny.fp,
            hidden=tiny.hidden,
            adapter=adapter,
        )
        expert = load_causal_lm(ModelRef(kind="peft", path=str(adapter)), meta=tiny.meta)
        expert_ids = tiny.prompt + tiny.trajectory[:k]  # same tokenizer: the meta's ids are reused
    else:  # a different model whose tokenizer has no chat template: it gets its own (plain) format
        path = lively_llama(tiny.tmp / "plain-expert", seed=7, chat_template=False)
        add_expert(
            tiny.registry, "astro", row, ModelRef(kind="local", path=str(path)), fingerprint=tiny.fp, hidden=tiny.hidden
        )
        expert = load_causal_lm(ModelRef(kind="local", path=str(path)))
        partial = decode(tiny.tok, tiny.trajectory[:k])
        expert_ids = to_ids(expert.tokenizer(plain_prompt(QUESTION), add_special_tokens=True))
        expert_ids += to_ids(expert.tokenizer(partial, add_special_tokens=False)) if partial else []
    reference = greedy_no_cache(expert.model, expert_ids, MAX_NEW - k, set(eos_ids(expert.model, expert.tokenizer)))

    events = list(open_hub(tiny).chat(QUESTION, max_new_tokens=MAX_NEW, stream=True))
    result = events[-1].result
    meta_text = decode(tiny.tok, tiny.trajectory[:k])
    expert_text = decode(expert.tokenizer, reference)
    assert result.text == meta_text + expert_text  # meta's partial kept, then the expert's continuation
    assert expert_text and expert_text != decode(tiny.tok, tiny.trajectory[k:])  # the expert really answered
    assert result.expert == "astro"
    [switch] = result.route
    assert (switch.expert, switch.token_index, switch.fell_back) == ("astro", k, False)
    assert switch.probability > 0.99
    # events: meta deltas, then the Switch, then the expert's deltas, then Done
    kinds = [
        (
            "meta"
            if isinstance(e, TextDelta) and e.source == "meta"
            else "expert"
            if isinstance(e, TextDelta)
            else type(e).__name__
        )
        for e in events
    ]
    assert kinds.index("Switch") > max((i for i, x in enumerate(kinds) if x == "meta"), default=-1)
    assert "".join(e.text for e in events if isinstance(e, TextDelta) and e.source == "astro") == expert_text
    assert isinstance(events[-1], Done) and result.completion_tokens == k + len(reference)


def test_route_record_json(tiny):
    lora_expert(tiny, k=0)
    data = open_hub(tiny).chat(QUESTION, max_new_tokens=6).to_json()
    assert set(data) >= {"text", "expert", "route", "warnings", "usage", "finish_reason"}
    [route] = data["route"]
    assert route["expert"] == "astro" and route["token_index"] == 0 and 0.99 < route["probability"] <= 1.0
    assert route["fell_back"] is False and route["reason"] is None
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]


def test_expert_named_by_caller_answers_directly(tiny):
    adapter = lora_expert(tiny, k=0)
    expert = load_causal_lm(ModelRef(kind="peft", path=str(adapter)), meta=tiny.meta)
    reference = greedy_no_cache(expert.model, tiny.prompt, 8, tiny.eos)
    result = open_hub(tiny).chat(QUESTION, max_new_tokens=8, expert="astro")
    assert result.text == decode(tiny.tok, reference)
    assert result.route[0].reason == "requested" and result.expert == "astro"


# -- fallbacks ------------------------------------------------------------------------------------
def _assert_fell_back(tiny, result, name, words):
    assert result.text == decode(tiny.tok, tiny.trajectory)  # the meta model finished, unchanged
    [switch] = result.route
    assert switch.expert == name and switch.fell_back and any(w in switch.reason for w in words), switch.reason
    assert len(result.warnings) == 1 and "\n" not in result.warnings[0] and name in result.warnings[0]


def test_fallback_when_adapter_deleted_from_store(tiny):
    lora_expert(tiny, k=switch_step(tiny))
    hub = open_hub(tiny)
    shutil.rmtree(tiny.registry.abspath(tiny.registry.get_expert("astro").adapter_path))
    events = list(hub.chat(QUESTION, max_new_tokens=MAX_NEW, stream=True))
    assert any(isinstance(e, RouteWarning) for e in events)
    _assert_fell_back(tiny, events[-1].result, "astro", ["adapter"])


def test_fallback_when_remote_unreachable(tiny):
    ref = ModelRef(kind="openai", url=f"http://127.0.0.1:{closed_port()}/v1", model="x", timeout_s=2)
    add_expert(
        tiny.registry,
        "far",
        row_winning_at(tiny.states, switch_step(tiny)),
        ref,
        fingerprint=tiny.fp,
        hidden=tiny.hidden,
    )
    _assert_fell_back(tiny, open_hub(tiny).chat(QUESTION, max_new_tokens=MAX_NEW), "far", ["unreachable"])


def test_fallback_when_remote_too_slow(tiny):
    with CompletionsServer(delay_s=1.5) as server:
        ref = ModelRef(kind="openai", url=server.url, model="tiny-remote", timeout_s=0.3)
        add_expert(
            tiny.registry,
            "slow",
            row_winning_at(tiny.states, switch_step(tiny)),
            ref,
            fingerprint=tiny.fp,
            hidden=tiny.hidden,
        )
        _assert_fell_back(
            tiny, open_hub(tiny).chat(QUESTION, max_new_tokens=MAX_NEW), "slow", ["did not answer", "stopped answering"]
        )


def test_remote_expert_continues_the_open_assistant_turn(tiny):
    k = switch_step(tiny)
    with CompletionsServer(" the remote expert speaks") as server:
        ref = ModelRef(kind="openai", url=server.url, model="tiny-remote", timeout_s=5)
        add_expert(
            tiny.registry, "remote", row_winning_at(tiny.states, k), ref, fingerprint=tiny.fp, hidden=tiny.hidden
        )
        result = open_hub(tiny).chat(QUESTION, max_new_tokens=MAX_NEW, stop=["never-seen"])
    partial = decode(tiny.tok, tiny.trajectory[:k])
    assert result.text == partial + " the remote expert speaks"
    assert result.route[0].expert == "remote" and not result.route[0].fell_back
    [request] = server.requests
    template = tiny.tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert request["prompt"] == template + partial  # the assistant turn is continued, not restarted
    assert (
        request["model"] == "tiny-remote" and request["max_tokens"] == MAX_NEW - k and request["stop"] == ["never-seen"]
    )


def test_a_killed_remote_expert_cools_down_and_comes_back(tiny):
    """A real server process: killed, the expert fails 3 requests (each falls back), then is out of
    routing (no attempt, a warning); restarted on its port, a probe after the cool-down lets it back."""
    from fastapi.testclient import TestClient

    from etr_hub.server.app import create_app
    from etr_hub.server.config import ServerConfig

    k, port = switch_step(tiny), closed_port()
    proc = start_completions_process(port)
    try:
        ref = ModelRef(kind="openai", url=f"http://127.0.0.1:{port}/v1", model="tiny-remote", timeout_s=5)
        add_expert(tiny.registry, "far", row_winning_at(tiny.states, k), ref, fingerprint=tiny.fp, hidden=tiny.hidden)
        hub = open_hub(tiny, failures_before_cooldown=3, cooldown_s=4.0)  # long enough for a loaded CI machine
        remote_answer = decode(tiny.tok, tiny.trajectory[:k]) + " the remote expert speaks"
        assert hub.chat(QUESTION, max_new_tokens=MAX_NEW).text == remote_answer
        proc.kill()
        proc.wait()
        for _ in range(3):
            _assert_fell_back(tiny, hub.chat(QUESTION, max_new_tokens=MAX_NEW), "far", ["unreachable"])
        result = hub.chat(QUESTION, max_new_tokens=MAX_NEW)
        assert result.route == [] and result.text == decode(tiny.tok, tiny.trajectory)  # not even tried
        [warning] = result.warnings
        assert "expert 'far' is cooling down after 3 failure(s) in a row" in warning and "unreachable" in warning
        with TestClient(create_app(hub, ServerConfig())) as client:
            far = client.get("/health").json()["experts"]["far"]
        assert far["state"] == "cooling_down" and "unreachable" in far["reason"] and 0 < far["seconds_left"] <= 4.0
        proc = start_completions_process(port)
        time.sleep(max(0.0, far["seconds_left"]) + 0.2)  # past the cool-down: the next routed request probes it first
        result = hub.chat(QUESTION, max_new_tokens=MAX_NEW)
        assert result.text == remote_answer and result.warnings == [] and not result.route[0].fell_back
        assert hub.pool.health.report(0)["far"] == {"state": "ok", "failures": 0}
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("fallback", ["meta", "next-expert"])
def test_a_cooling_experts_question_goes_where_the_operator_chose(tiny, fallback):
    """'far' (down, cooling) would win at step k, 'near' (a working remote) is the next-best token there."""
    k = switch_step(tiny)
    with CompletionsServer(" the near expert speaks") as server:
        down = ModelRef(kind="openai", url=f"http://127.0.0.1:{closed_port()}/v1", model="gone", timeout_s=2)
        up = ModelRef(kind="openai", url=server.url, model="tiny-remote", timeout_s=5)
        add_expert(tiny.registry, "far", row_winning_at(tiny.states, k), down, fingerprint=tiny.fp, hidden=tiny.hidden)
        near_row = row_winning_at(tiny.states, k, margin=250.0)  # beats the words at k, below far
        add_expert(tiny.registry, "near", near_row, up, fingerprint=tiny.fp, hidden=tiny.hidden)
        hub = open_hub(tiny, failures_before_cooldown=1, cooldown_s=300.0, fallback=fallback)
        first = hub.chat(QUESTION, max_new_tokens=MAX_NEW).route[0]  # it fails once: now cooling down
        assert first.expert == "far" and first.fell_back and "unreachable" in first.reason
        server.requests.clear()  # the failed answer went on with near: count from here
        result = hub.chat(QUESTION, max_new_tokens=MAX_NEW)
    [warning] = result.warnings
    assert "expert 'far' is cooling down" in warning
    if fallback == "meta":
        assert result.route == [] and result.text == decode(tiny.tok, tiny.trajectory) and not server.requests
    else:
        assert [s.expert for s in result.route] == ["near"]
        assert result.text == decode(tiny.tok, tiny.trajectory[:k]) + " the near expert speaks"


def test_a_bad_fallback_is_one_clear_error(tiny):
    with pytest.raises(EtrHubError, match="`fallback` must be one of meta, next-expert"):
        open_hub(tiny, fallback="elsewhere")


KEY = "sk-test-0123456789abcdef"  # a made-up key for the local test server


@pytest.mark.parametrize(
    "env_value, ok, words",
    [
        (KEY, True, []),
        (None, False, ["ASTRO_KEY", "not set"]),
        ("sk-wrong-key", False, ["refused the API key in $ASTRO_KEY", "401"]),
    ],
)
def test_remote_expert_sends_the_api_key_from_the_named_environment_variable(tiny, monkeypatch, env_value, ok, words):
    if env_value is None:
        monkeypatch.delenv("ASTRO_KEY", raising=False)
    else:
        monkeypatch.setenv("ASTRO_KEY", env_value)
    k = switch_step(tiny)
    with CompletionsServer(" the keyed expert speaks", api_key=KEY) as server:
        ref = ModelRef(kind="openai", url=server.url, model="tiny-remote", timeout_s=5, api_key_env="ASTRO_KEY")
        add_expert(
            tiny.registry,
            "keyed",
            row_winning_at(tiny.states, k),
            ref,
            fingerprint=tiny.fp,
            hidden=tiny.hidden,
            allow_env=("ASTRO_KEY",),
        )
        result = open_hub(tiny).chat(QUESTION, max_new_tokens=MAX_NEW)
    stored = tiny.registry.get_expert("keyed").manifest["expert"]
    assert stored["api_key_env"] == "ASTRO_KEY" and KEY not in str(stored)  # the bundle names the variable only
    if ok:
        assert result.text == decode(tiny.tok, tiny.trajectory[:k]) + " the keyed expert speaks" and not result.warnings
        assert server.authorizations and set(server.authorizations) == {f"Bearer {KEY}"}
    else:
        _assert_fell_back(tiny, result, "keyed", words)
    assert all(v not in str(result.to_json()) for v in (KEY, "sk-wrong-key"))  # never echoed


def test_api_key_env_must_be_a_variable_name():
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        ModelRef(kind="openai", url="http://h:1/v1", model="m", api_key_env="sk-live-abc")
    with pytest.raises(ValueError, match="does not apply"):
        ModelRef(kind="local", path="/x", api_key_env="KEY")


# -- LoRA experts share the meta model's weights ---------------------------------------------------
def test_six_lora_experts_share_base_weights_and_leave_meta_unchanged(tiny):
    for i in range(6):
        lora_expert(tiny, name=f"lora{i}", k=0, seed=i + 1)
    hub = open_hub(tiny)
    probe = torch.tensor([tiny.prompt])
    with torch.no_grad():
        before = tiny.meta.model(input_ids=probe).logits.clone()
    meta_ptrs = {p.data_ptr() for p in tiny.meta.model.parameters()}
    meta_bytes = sum(p.numel() * p.element_size() for p in tiny.meta.model.parameters())
    for i in range(6):
        backend = hub.pool.get(f"lora{i}")
        assert backend.kind == "lora" and backend.shares_base
        base = [p for n, p in backend.loaded.model.named_parameters() if "lora_" not in n]
        assert base and all(p.data_ptr() in meta_ptrs for p in base)  # no copy of the base weights
        assert hub.chat(QUESTION, max_new_tokens=4, expert=f"lora{i}").text  # the adapter is used
    assert len(hub.pool.loaded) == 6
    adapters = sum(unshared_bytes(b.loaded.model, tiny.meta.model) for b in hub.pool.loaded.values())
    assert adapters < 0.6 * meta_bytes  # six adapters: only their LoRA matrices
    assert hub.pool.used_bytes > adapters  # their prefix caches count against the budget too
    with torch.no_grad():
        after = tiny.meta.model(input_ids=probe).logits
    assert torch.equal(before, after)
    assert hub.chat(QUESTION, max_new_tokens=MAX_NEW).route[0].expert == "lora0"


def test_least_recently_used_expert_is_unloaded_over_budget(tiny):
    for i in range(3):
        lora_expert(tiny, name=f"lora{i}", k=0, seed=i + 1)
    hub = open_hub(tiny, memory_budget_mb=0.001)
    for name in ("lora0", "lora1", "lora2"):
        hub.pool.get(name)
        assert list(hub.pool.loaded) == [name]  # the budget holds one; the older one went


# -- streaming, limits, bad input -----------------------------------------------------------------
def test_closing_the_stream_stops_and_the_hub_stays_usable(tiny):
    hub = open_hub(tiny)
    events = hub.chat(QUESTION, max_new_tokens=MAX_NEW, stream=True)
    first = next(e for e in events if isinstance(e, TextDelta))
    events.close()
    assert first.source == "meta"
    assert hub.chat(QUESTION, max_new_tokens=MAX_NEW).text == decode(tiny.tok, tiny.trajectory)


def test_stop_string_cuts_the_answer(tiny):
    full = decode(tiny.tok, tiny.trajectory)
    stop = full[3:5]
    result = open_hub(tiny).chat(QUESTION, max_new_tokens=MAX_NEW, stop=[stop])
    assert result.text == full[: full.find(stop)] and result.finish_reason == "stop"


def test_sampling_is_seeded(tiny):
    hub = open_hub(tiny)
    a, b = (hub.chat(QUESTION, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=5).text for _ in range(2))
    assert a == b


def test_complete_is_a_raw_unrouted_continuation(tiny):
    lora_expert(tiny, k=0)  # would win at once in a routed chat
    ids = to_ids(tiny.tok("once upon a time", add_special_tokens=True))
    reference = greedy_no_cache(tiny.meta.model, ids, 6, tiny.eos)
    result = open_hub(tiny).complete("once upon a time", max_new_tokens=6)
    assert result.text == decode(tiny.tok, reference) and result.route == []


def test_message_longer_than_context_is_cut_from_the_left(tiny):
    long = "word " * 700  # the tiny model's context is 512 positions
    result = open_hub(tiny).chat([{"role": "user", "content": long}], max_new_tokens=8)
    assert result.prompt_tokens <= 512 - 8
    assert len(result.warnings) == 1 and "context" in result.warnings[0]


def test_old_turns_are_dropped_first(tiny):
    history = [{"role": "user", "content": "x " * 300}, {"role": "assistant", "content": "y " * 300}, *QUESTION]
    result = open_hub(tiny).chat(history, max_new_tokens=MAX_NEW)
    assert "dropped the 2 oldest" in result.warnings[0]
    assert result.text.startswith(decode(tiny.tok, tiny.trajectory[:3]))  # the question itself survives intact


@pytest.mark.parametrize(
    "messages, kwargs, message",
    [
        ([{"role": "user", "content": "   "}], {}, "empty message"),
        ([], {}, "no messages"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], {}, "not the user"),
        ([{"role": "robot", "content": "hi"}], {}, "message 0"),
        (QUESTION, {"max_new_tokens": 0}, "max_new_tokens"),
        (QUESTION, {"temperature": -1}, "temperature"),
        (QUESTION, {"top_p": 0}, "top_p"),
        (QUESTION, {"expert": "nobody"}, "not available"),
    ],
)
def test_bad_input_is_one_clear_error(tiny, messages, kwargs, message):
    hub = open_hub(tiny)
    with pytest.raises(EtrHubError, match=message):
        hub.chat(messages, stream=True, **kwargs)  # raised at the call, before any decoding


def test_explain_shows_the_winning_expert(tiny):
    lora_expert(tiny, name="astro", k=0)
    add_expert(
        tiny.registry,
        "quiet",
        quiet_row(tiny),
        ModelRef(kind="local", path=str(tiny.path)),
        fingerprint=tiny.fp,
        hidden=tiny.hidden,
    )
    exp = open_hub(tiny).explain(QUESTION[0]["content"], top=5)
    assert exp.winner == "astro" and [e.name for e in exp.experts] == ["astro", "quiet"]
    assert exp.routing_position == len(tiny.prompt) - 1 and len(exp.words) == 5
    total = exp.p_any_expert + sum(w.probability for w in exp.words)
    assert exp.experts[0].probability > 0.99 and total <= 1.0 + 1e-5
    data = exp.to_json()
    assert data["winner"] == "astro" and {"name", "probability", "logit"} <= set(data["experts"][0])


def test_switch_event_precedes_expert_text(tiny):
    lora_expert(tiny, k=0)
    events = list(open_hub(tiny).chat(QUESTION, max_new_tokens=6, stream=True))
    assert isinstance(events[0], Switch) and events[0].switch.token_index == 0
    assert all(e.source == "astro" for e in events if isinstance(e, TextDelta))


def test_lean_lora_forward_equals_peft(tiny):
    from etr_hub.backends.lora.lean import LeanLoraLinear, make_lean

    ref = ModelRef(kind="peft", path=str(tiny.adapter(1)))
    peft_model = load_causal_lm(ref, meta=tiny.meta).model
    lean = load_causal_lm(ref, meta=tiny.meta).model
    assert len(make_lean(lean)) == 4  # q_proj and v_proj in both layers
    swapped = [m for m in lean.modules() if isinstance(m, LeanLoraLinear)]
    meta_ptrs = {p.data_ptr() for p in tiny.meta.model.parameters()}
    assert all(m.base.weight.data_ptr() in meta_ptrs for m in swapped)  # still the meta model's weights
    probe = torch.tensor([tiny.prompt])
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=probe).logits, lean(input_ids=probe).logits, atol=1e-4)


def test_lora_expert_merges_only_while_it_answers_and_the_meta_stays_bit_exact(tiny):
    lora_expert(tiny, k=0)
    hub = open_hub(tiny)
    before = {n: p.clone() for n, p in tiny.meta.model.state_dict().items()}
    fingerprint = meta_fingerprint(tiny.meta.model)
    events = hub.chat(QUESTION, max_new_tokens=MAX_NEW, stream=True)
    assert next(e for e in events if isinstance(e, TextDelta)).source == "astro"  # the expert is mid-answer
    layers = hub.pool.get("astro").lean_layers
    meta_ptrs = {p.data_ptr() for p in tiny.meta.model.parameters()}
    assert layers and all(
        x.merged is not None and x.merged.data_ptr() not in meta_ptrs for x in layers
    )  # separate copies
    events.close()
    assert all(x.merged is None for x in layers)  # dropped with the answer
    assert meta_fingerprint(tiny.meta.model) == fingerprint
    assert all(torch.equal(before[n], p) for n, p in tiny.meta.model.state_dict().items())  # bit-exact


def test_prefix_cache_recomputes_only_what_differs(tiny):
    from etr_hub.generation.runner import common_prefix

    adapter = lora_expert(tiny, k=0)
    expert = load_causal_lm(ModelRef(kind="peft", path=str(adapter)), meta=tiny.meta)
    hub = open_hub(tiny)
    fed: list[int] = []
    decoder = hub.pool.get("astro").loaded.model.get_decoder()
    decoder.register_forward_pre_hook(
        lambda m, args, kwargs: fed.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    other = [{"role": "user", "content": "tell me about the sea"}]
    first_feed = []
    for messages in (other, QUESTION, QUESTION):
        ids = routing_prompt_ids(tiny.tok, messages)[0]
        fed.clear()
        result = hub.chat(messages, max_new_tokens=6, expert="astro")
        assert result.text == decode(tiny.tok, greedy_no_cache(expert.model, ids, 6, tiny.eos))  # same answer as PEFT's
        first_feed.append(fed[0])
    other_ids = routing_prompt_ids(tiny.tok, other)[0]
    shared = common_prefix(other_ids, tiny.prompt)
    assert 0 < shared < len(tiny.prompt)
    assert first_feed == [len(other_ids), len(tiny.prompt) - shared, 1]  # cold, the new part only, the last token


@pytest.mark.parametrize("layers, continues", [((1,), True), (None, False)])
def test_upper_layer_lora_continues_the_meta_cache(tiny, layers, continues):
    """An adapter on layer 1 only (of 2) takes over the meta model's keys/values of layer 0 and
    recomputes just layer 1 over the prompt; one on every layer recomputes the whole prompt.
    Either way the answer is what the expert gives re-encoding everything at every step."""
    k = switch_step(tiny)
    adapter = tiny.adapter(1, layers)
    add_expert(
        tiny.registry,
        "astro",
        row_winning_at(tiny.states, k),
        ModelRef(kind="peft", path="adapter"),
        fingerprint=tiny.fp,
        hidden=tiny.hidden,
        adapter=adapter,
    )
    expert = load_causal_lm(ModelRef(kind="peft", path=str(adapter)), meta=tiny.meta)
    reference = greedy_no_cache(expert.model, tiny.prompt + tiny.trajectory[:k], MAX_NEW - k, tiny.eos)
    hub = open_hub(tiny)
    backend = hub.pool.get("astro")
    assert (hub.keep_layer, backend.first_layer) == ((1, 1) if continues else (None, None))
    widths: list[int] = []  # tokens per call of the expert's first decoder layer
    first = backend.loaded.model.get_decoder().layers[0]
    hook = first.register_forward_pre_hook(
        lambda m, args, kwargs: widths.append((args[0] if args else kwargs["hidden_states"]).shape[1]), with_kwargs=True
    )
    try:
        result = hub.chat(QUESTION, max_new_tokens=MAX_NEW)
    finally:
        hook.remove()
    assert result.route[0].token_index == k and not result.route[0].fell_back
    assert result.text == decode(tiny.tok, tiny.trajectory[:k]) + decode(tiny.tok, reference)
    prompt = len(tiny.prompt) + k
    assert widths[0] == (1 if continues else prompt)  # layer 0 never re-reads the prompt when it continues
    assert all(w == 1 for w in widths[1:])
    again = hub.chat(QUESTION, max_new_tokens=MAX_NEW)  # now its own prefix cache holds the prompt, too
    assert again.text == result.text


def test_meta_runner_keeps_the_residual_in_step_with_its_cache(tiny):
    from etr_hub.generation.runner import CausalRunner

    assert CausalRunner(tiny.meta.model, keep_layer=5).keep_layer is None  # a bundle naming a layer the model lacks
    runner = CausalRunner(tiny.meta.model, keep_layer=1)
    runner.feed(tiny.prompt[:5])
    runner.feed(tiny.prompt[5:7])
    assert runner.residual().shape == (1, 7, tiny.hidden)
    runner.truncate(4, compact=True)
    assert runner.residual().shape == (1, 4, tiny.hidden) and runner.length == 4


def test_continuing_the_meta_cache_is_refused_when_it_would_not_be_exact(tiny):
    """The load-time check: a meta model that differs below the adapted layers (here: another
    model posing as the meta) makes the expert recompute its prompt instead."""
    from etr_hub.generation.shared_prefix import reuse_is_exact

    expert = load_causal_lm(ModelRef(kind="peft", path=str(tiny.adapter(1, (1,)))), meta=tiny.meta)
    probe = tiny.prompt[:8]
    assert reuse_is_exact(expert.model, tiny.meta.model, 1, probe)
    other = load_causal_lm(ModelRef(kind="local", path=str(lively_llama(tiny.tmp / "other", seed=9))), role="meta")
    assert not reuse_is_exact(expert.model, other.model, 1, probe)


def test_default_route_window_only_routes_at_the_routing_position(tiny):
    """Expert rows are trained at the first assistant position; by default they compete only there."""
    k = switch_step(tiny)
    assert k > 0
    add_expert(
        tiny.registry,
        "astro",
        row_winning_at(tiny.states, k),
        ModelRef(kind="local", path=str(tiny.tmp / "nowhere")),
        fingerprint=tiny.fp,
        hidden=tiny.hidden,
    )
    result = open_hub(tiny, route_window=1).chat(QUESTION, max_new_tokens=MAX_NEW)
    assert result.route == [] and result.expert is None
    assert open_hub(tiny).chat(QUESTION, max_new_tokens=MAX_NEW).route[0].token_index == k  # the control

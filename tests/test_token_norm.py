"""One token must not capture every prompt (issue #15, item 3): a row far larger than the meta
model's own output rows is refused at `expert add` and skipped at W_E assembly, and a non-finite
expert logit never routes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from etr_hub.models.refs import ModelRef
from tests.helpers import invoke, run_cli
from tests.runtime_support import QUESTION, add_expert, lively_llama, routing_states
from tests.test_bundle_safety import assert_refused, list_json

DOGS = "Tell me a fun fact about dogs."
LOCAL = ModelRef(kind="local", path="/nonexistent/expert")  # never loaded: the meta model answers


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A lively tiny meta model and an expert row of a trained token's size (0.3x W_V's largest
    row) pointing at the routing state of DOGS: it loses there, but scaled up it would win."""
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.fingerprint import meta_fingerprint, output_embedding
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.routing.math import max_row_norm

    path = lively_llama(tmp_path_factory.mktemp("norm") / "meta")
    meta = load_causal_lm(ModelRef(kind="local", path=str(path)))
    w_v = output_embedding(meta.model)  # (V, C)
    prompt = routing_prompt_ids(meta.tokenizer, [{"role": "user", "content": DOGS}])[0]
    h = routing_states(meta.model, prompt)[-1].float()  # (C,)
    top_word = float((w_v @ h).max())
    row = (h / h.norm() * 0.3 * max_row_norm(w_v)).reshape(1, -1)  # (1, C)
    assert float(row @ h) < top_word < float(1e4 * row @ h)  # x1 stays with the meta model; x1e4 would take the prompt
    return SimpleNamespace(path=path, meta=meta, fp=meta_fingerprint(meta.model), row=row, max_norm=max_row_norm(w_v))


def _register_meta(registry, tiny, *, recorded: bool):
    """recorded=False: a registry from before the row-norm record (the check moves to assembly)."""
    registry.register_meta(
        reference={"kind": "local", "path": str(tiny.path)},
        display="tiny-meta",
        fingerprint=tiny.fp,
        hidden_size=32,
        vocab_size=272,
        max_row_norm=tiny.max_norm if recorded else None,
    )


def _scaled(row: torch.Tensor, scale: float) -> torch.Tensor:
    if scale > 1e30:  # as large as float32 goes while every entry stays finite
        return row / row.abs().max() * scale
    return row * scale


SCALES = [  # (id, scale, accepted, words)
    ("trained-size", 1.0, True, []),
    ("x30", 30.0, True, []),  # 9x the largest word row: big, but inside the documented 100x band
    (
        "x1e4",
        1e4,
        False,
        ["token row norm", "× the meta model's largest output row", "the limit is 100×", "retrain the token"],
    ),
    ("x3e38", 3e38, False, ["× the meta model's largest output row"]),
]


@pytest.mark.parametrize("scale,accepted,words", [pytest.param(s, a, w, id=i) for i, s, a, w in SCALES])
def test_expert_add_refuses_a_row_far_beyond_the_meta_models_rows(registry, tiny, tmp_path, scale, accepted, words):
    from etr_hub.bundle.io import write_token_bundle
    from etr_hub.bundle.manifest import MetaInfo

    _register_meta(registry, tiny, recorded=True)
    bundle = write_token_bundle(
        tmp_path / "dogs",
        _scaled(tiny.row, scale),
        name="dogs",
        license="MIT",
        provider="tests",
        expert=LOCAL,
        meta=MetaInfo(reference="tiny", hidden_size=32, vocab_size=272, fingerprint=tiny.fp),
    )
    res = invoke("expert", "add", str(bundle.root))
    if accepted:
        assert res.returncode == 0, res.stderr
    else:
        assert_refused(res, *words)
        assert list_json() == []


def test_a_row_already_in_a_registry_is_skipped_and_the_meta_model_answers(registry, tiny):
    """Accepted by a registry that had no row-norm record: `chat` and `explain` skip it, say why,
    and agree that the meta model answers (before: p = 1.0 to the expert on small talk)."""
    _register_meta(registry, tiny, recorded=False)
    add_expert(registry, "dogs", _scaled(tiny.row, 1e4), LOCAL, fingerprint=tiny.fp, hidden=32)

    chat = run_cli("chat", "--once", DOGS, "--json", "--max-new-tokens", "4")
    assert chat.returncode == 0, chat.stderr
    assert json.loads(chat.stdout)["route"] == [] and json.loads(chat.stdout)["expert"] is None
    assert (
        "skipped expert 'dogs': token row norm" in chat.stderr
        and "× the meta model's largest output row" in chat.stderr
    )
    explain = run_cli("explain", DOGS, "--json")
    assert explain.returncode == 0, explain.stderr
    assert json.loads(explain.stdout)["winner"] is None


# -- never route on NaN --------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["overflow", "nan"])
def test_a_non_finite_expert_logit_never_routes(tiny, bad):
    from etr_hub.generation.sampling import Sampling
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.runtime.decode import RoutedDecoder

    prompt = routing_prompt_ids(tiny.meta.tokenizer, QUESTION)[0]
    if bad == "overflow":  # finite float32 entries whose dot product with h overflows to +inf
        w_e = _scaled(routing_states(tiny.meta.model, prompt)[-1].float().reshape(1, -1), 3e38)
    else:
        w_e = torch.full((1, 32), float("nan"))
    w_e = torch.cat([w_e, torch.zeros(1, 32)])  # (2, C): a second, harmless expert
    plain, routed = (RoutedDecoder(tiny.meta.model, w, Sampling.make()) for w in (None, w_e.T.contiguous()))
    for d in (plain, routed):
        d.start(prompt)
    assert routed.next() == plain.next()  # the meta model's own token, not the broken expert
    assert routed.take_unroutable() == [0] and routed.take_unroutable() == []  # reported once
    assert routed.probability(routed.vocab) == 0.0


def test_the_hub_warns_and_explain_agrees_when_a_logit_overflows(registry, tiny):
    """W_E rows pass the norm band, but the logits still overflow (as a half-precision meta model's
    can): routing and explain both treat the expert as not routable."""
    from etr_hub.runtime import Hub

    _register_meta(registry, tiny, recorded=True)
    add_expert(registry, "dogs", tiny.row, LOCAL, fingerprint=tiny.fp, hidden=32)
    hub = Hub.open(registry, meta=tiny.meta)
    baseline = hub.chat(QUESTION, max_new_tokens=4)
    hub.w_e_t.copy_(_scaled(hub.w_e_t.T, 3e38).T)  # the expert logits now overflow to +inf
    result = hub.chat(QUESTION, max_new_tokens=4)
    assert result.route == [] and result.text == baseline.text
    assert any("non-finite logit" in w and "'dogs'" in w for w in result.warnings), result.warnings
    explained = hub.explain(QUESTION[0]["content"])
    assert explained.winner is None and explained.experts[0].probability == 0.0


def test_init_records_the_row_norms_an_older_registry_lacks(registry, tiny):
    _register_meta(registry, tiny, recorded=False)
    res = run_cli("init")
    assert res.returncode == 0, res.stderr
    assert registry.active_meta().max_row_norm == pytest.approx(tiny.max_norm)
    assert registry.active_meta().fingerprint == tiny.fp

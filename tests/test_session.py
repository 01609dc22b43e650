"""The one meta-model session (etr_hub/session.py): cached routing states equal a live
pass and are never computed twice, the mean-row init, the everyday prompts, and the one way to
write a bundle from a token row."""

from __future__ import annotations

import json

import pytest
import torch

from etr_hub.errors import DataError
from tests.tiny_models import make_tiny_llama

QUERIES = ["Why is the sky blue?", "What is a comet?", "How do I bake bread?"]


@pytest.fixture
def session(registry, tmp_path):
    from etr_hub.models.refs import ModelRef
    from etr_hub.registry.meta import register_meta_model
    from etr_hub.session import ModelSession

    register_meta_model(registry, ModelRef.parse(str(make_tiny_llama(tmp_path / "meta"))))
    return ModelSession(registry)


def _refuse_loading(monkeypatch):
    from etr_hub.session import ModelSession

    def refuse(*a, **k):
        raise AssertionError("the meta model was loaded although everything asked for is cached")

    monkeypatch.setattr(ModelSession, "meta", property(refuse))


def test_routing_states_are_a_live_pass_and_are_cached(session, registry, monkeypatch):
    from etr_hub.models.scoring import routing_states
    from etr_hub.session import ModelSession

    live = routing_states(session.meta.model, session.meta.tokenizer, QUERIES)  # (3, C), (3,), (3,)
    live_h, live_lse = live.hidden, live.lse
    w_v = session.meta.model.get_output_embeddings().weight.float()  # (V, C)
    torch.testing.assert_close(live.top, (live_h @ w_v.T).max(dim=-1).values)  # the top word logit
    seen: list[tuple[str, int]] = []

    def progress(description: str, total: int):
        seen.append((description, total))
        return lambda _n: None

    hidden, lse, top = session.routing_states(QUERIES[:2], progress, description="first two")
    assert seen == [("first two", 2)]
    torch.testing.assert_close(hidden, live_h[:2])
    torch.testing.assert_close(lse, live_lse[:2])
    torch.testing.assert_close(top, live.top[:2])

    # a second session on the same registry: only the third query needs the meta model
    again = ModelSession(registry)
    hidden, lse, top = again.routing_states(QUERIES, progress)
    assert seen[-1] == ("meta model pass (routing states)", 1)
    torch.testing.assert_close(hidden, live_h)
    torch.testing.assert_close(lse, live_lse)
    torch.testing.assert_close(top, live.top)

    _refuse_loading(monkeypatch)  # everything is cached now: no load, no pass
    hidden, _, top = ModelSession(registry).routing_states(list(reversed(QUERIES)), progress)
    torch.testing.assert_close(hidden, live_h.flip(0))
    torch.testing.assert_close(top, live.top.flip(0))
    assert len(seen) == 2


def test_mean_row_is_the_mean_output_embedding_row_and_is_cached(session, registry, monkeypatch):
    from etr_hub.models.fingerprint import output_embedding
    from etr_hub.session import ModelSession

    w_v = output_embedding(session.meta.model).float()  # (V, C)
    row = session.mean_row()
    assert row.shape == (1, w_v.shape[1])
    torch.testing.assert_close(row, w_v.mean(dim=0, keepdim=True))
    _refuse_loading(monkeypatch)
    assert torch.equal(ModelSession(registry).mean_row(), row)


def test_the_packaged_everyday_prompts_read_as_plain_json(tmp_path):
    """train-token used to read the packaged file with json.loads and r["split"]; the one reader
    (eval's, which validates) gives the same prompts for it."""
    from etr_hub.session import GENERAL_PROMPTS, read_general_prompts

    rows = [json.loads(line) for line in GENERAL_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    for split in ("train", "eval"):
        expected = [r["query"] for r in rows if r["split"] == split]
        assert read_general_prompts(split=split) == expected and len(expected) >= 20


def test_everyday_prompts_file_rules(tmp_path):
    from etr_hub.session import read_general_prompts

    path = tmp_path / "prompts.jsonl"
    lines = [
        {"query": "hello", "split": "train"},
        {"query": "how are you?", "split": "eval"},
        {"query": "no split: every split"},
        {"query": "   ", "split": "eval"},  # empty: passed over
        {"split": "eval"},  # no query: passed over
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert read_general_prompts(path, "eval") == ["how are you?", "no split: every split"]
    assert read_general_prompts(path, "train") == ["hello", "no split: every split"]
    assert read_general_prompts(tmp_path / "absent.jsonl") == [] and read_general_prompts(None) == []
    path.write_text('{"query": "hello"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"prompts\.jsonl:2 is not a JSON object"):
        read_general_prompts(path)


@pytest.mark.parametrize("shape", [(1, 16), (16,)])
def test_write_token_bundle_writes_a_bundle_that_validates(tmp_path, shape):
    from etr_hub.bundle import load_bundle
    from etr_hub.bundle.io import read_token, write_token_bundle
    from etr_hub.bundle.manifest import MetaInfo
    from etr_hub.models.refs import ModelRef

    row = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bundle = write_token_bundle(
        tmp_path / "b",
        row,
        name="astro",
        license="MIT",
        provider="tests",
        expert=ModelRef(kind="openai", url="http://127.0.0.1:9/v1", model="m"),
        meta=MetaInfo(reference="tiny", hidden_size=16, vocab_size=272, fingerprint="a" * 64),
    )
    again = load_bundle(bundle.root)
    assert again.manifest.token.shape == (1, 16) and again.manifest.token.dtype == "float32"
    stored = read_token(bundle.root, bundle.token_path, again.manifest)
    assert torch.equal(stored, row.float().reshape(1, 16))

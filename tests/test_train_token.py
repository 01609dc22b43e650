"""`etr-hub train-token` on tiny models: routing after training, frozen neighbours, cached == live, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import build_labelled, init_world, invoke
from tests.tiny_models import make_tiny_llama

DOMAINS = ("astronomy", "law", "cooking")


# A 2-layer random model's routing states barely separate domains (its attention hardly mixes), so
# routing quality is checked on the real meta model (test_routing_quality.py); here, the mechanics.
TINY_LR = ("--lr", "5e-3")


def train(name: str, *extra: str) -> dict:
    r = invoke("train-token", name, "--json", *TINY_LR, *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def trained(world):
    """Three experts trained one after another, each with the earlier ones frozen in the softmax."""
    init_world(world)
    summaries = {}
    for name in DOMAINS:
        build_labelled(world, name)
        summaries[name] = train(name)
    return summaries


def test_summary_and_manifest_record_the_training(world, trained):
    from etr_hub.registry import Registry

    s = trained["cooking"]
    assert s["queries"] == 20 and s["negatives"] == 40 + 80  # two earlier experts' query sets + 80 general prompts
    assert s["epochs"] >= 1 and 0 <= s["train_routing_accuracy"] <= 1
    m = Registry.open().get_expert("cooking").manifest
    assert m["training"]["negatives"] == ["astronomy", "law"] and m["training"]["word_negatives"] == 80
    assert (
        m["training"]["lr"] == 5e-3 and m["training"]["weight_decay"] == 1.0 and m["training"]["epochs"] == s["epochs"]
    )
    assert m["query_set"]["selection_rule"] == "label == 'cooking'"
    assert Path(s["bundle"], "token.safetensors").is_file() and Path(s["bundle"], "adapter").is_dir()


def test_training_a_new_expert_leaves_the_existing_rows_byte_identical(world):
    from etr_hub.registry import Registry

    init_world(world)
    for name in ("astronomy", "law"):
        build_labelled(world, name)
        train(name)
    reg = Registry.open()
    before = {n: reg.abspath(reg.get_expert(n).token_path).read_bytes() for n in ("astronomy", "law")}
    build_labelled(world, "cooking")
    train("cooking")
    after = {n: reg.abspath(reg.get_expert(n).token_path).read_bytes() for n in ("astronomy", "law")}
    assert after == before
    # retraining with the same seed is deterministic (from cached states, no meta pass)
    again = train("cooking", "--version", "9.9.9")
    assert again["token_sha256"] == reg.get_expert("cooking@0.1.0").token_sha256


def test_cached_states_train_the_same_row_as_live_forward_passes(world):
    """Training on cached (h, lse_V) equals training with a live meta forward pass per batch."""
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.fingerprint import output_embedding
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.models.refs import ModelRef
    from etr_hub.models.scoring import routing_states
    from etr_hub.routing import expert_token_init
    from etr_hub.training.optimize import TrainSettings, cached_features, train_rows

    meta = load_causal_lm(ModelRef.parse(str(world["meta"])), role="meta")
    queries = [r["query"] for d in DOMAINS for r in world["held_out"][d]]
    # astronomy -> the new token (2), law -> a frozen expert (1), cooking -> a word token (0)
    targets = torch.tensor([2 - DOMAINS.index(d) for d in DOMAINS for _ in world["held_out"][d]])
    w_frozen = torch.randn(1, meta.model.config.hidden_size) * 0.01
    init = expert_token_init(output_embedding(meta.model))
    cfg = TrainSettings(epochs=8, batch_size=4, lr=5e-3)

    hidden, lse, _ = routing_states(meta.model, meta.tokenizer, queries)

    def live(idx):  # the official ETR code's way: run the frozen model for every batch
        hs, ls = [], []
        with torch.no_grad():
            for i in idx.tolist():
                ids, _ = routing_prompt_ids(meta.tokenizer, [{"role": "user", "content": queries[i]}])
                out = meta.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
                hs.append(out.hidden_states[-1][:, -1])  # (1, C)
                ls.append(torch.logsumexp(out.logits[:, -1].float(), dim=-1))  # (1,)
        return torch.cat(hs), torch.cat(ls)

    a = train_rows(cached_features(hidden, lse), len(queries), targets, w_frozen, init, cfg)
    b = train_rows(live, len(queries), targets, w_frozen, init, cfg)
    assert a.steps == b.steps == 8 * 8
    torch.testing.assert_close(a.row, b.row, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a.row, init)  # it did train


@pytest.mark.parametrize("case", ["no-query-set", "other-meta"])  # bad options: test_cli_validation.py
def test_bad_input_is_one_line_and_writes_nothing(world, tmp_path, case):
    from etr_hub.config import settings
    from etr_hub.registry import Registry

    init_world(world)
    if case == "other-meta":  # a query set built for one meta model, then the registry moves to another
        build_labelled(world, "astronomy")
        assert invoke("init", "--meta", str(make_tiny_llama(tmp_path / "other-meta", seed=4))).returncode == 0
    r = invoke("train-token", "astronomy")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "no query set" in errors[0]
    assert Registry.open().list_experts() == []
    assert not any(settings().bundles_dir.glob("*")) if settings().bundles_dir.exists() else True


def test_negatives_file_joins_the_word_negatives_and_changes_the_row(world, tmp_path):
    from etr_hub.registry import Registry

    init_world(world)
    build_labelled(world, "astronomy")
    plain = train("astronomy", "--version", "1.0.0", "--out", str(tmp_path / "plain"))
    prompts = ["Sort 5, -3, 12, 0 from smallest to largest.", "What is 1011 in binary?", "Reverse the word planet."]
    negatives = tmp_path / "negatives.jsonl"
    negatives.write_text("".join(json.dumps({"query": q}) + "\n" for q in prompts))
    s = train("astronomy", "--version", "1.0.1", "--out", str(tmp_path / "neg"), "--negatives", str(negatives))
    assert s["negatives"] == plain["negatives"] + 3
    reg = Registry.open()
    m = reg.get_expert("astronomy@1.0.1").manifest
    assert m["training"]["word_negatives"] == 80 + 3
    assert s["token_sha256"] != plain["token_sha256"]  # the prompts entered the objective


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("", "holds no prompts"),
        ('{"query": "fine"}\n{"prompt": "no query key"}\n', ":2 has no non-empty 'query'"),
        ('{"query": "fine"}\nnot json\n', ":2 is not JSON"),
    ],
)
def test_bad_negatives_file_is_one_line_and_writes_nothing(world, tmp_path, content, message):
    from etr_hub.registry import Registry

    init_world(world)
    build_labelled(world, "astronomy")
    path = tmp_path / "negatives.jsonl"
    if content is not None:
        path.write_text(content)
    r = invoke("train-token", "astronomy", "--negatives", str(path), "--out", str(tmp_path / "bundle"))
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 5 and len(errors) == 1 and message in errors[0] and "Traceback" not in r.stderr, r.stderr
    assert Registry.open().list_experts() == [] and not (tmp_path / "bundle").exists()


def test_a_registered_bundles_token_retrains_in_another_registry(world, tmp_path, monkeypatch):
    """An operator retrains a bundle's token where its query set came in the bundle (the adapter named relative
    to the bundle): the new bundle ships the registered copy of that adapter, byte for byte."""
    from etr_hub.store import tree_listing, tree_sha256

    init_world(world)
    build_labelled(world, "astronomy")
    first = train("astronomy", "--version", "1.0.0", "--out", str(tmp_path / "first"))
    monkeypatch.setenv("ETR_HUB_HOME", str(tmp_path / "other-home"))
    init_world(world)
    assert invoke("expert", "add", first["bundle"], "--no-report").returncode == 0
    again = train("astronomy", "--version", "1.0.1", "--out", str(tmp_path / "again"))
    adapters = [tree_sha256(tree_listing(Path(b, "adapter"))) for b in (first["bundle"], again["bundle"])]
    assert adapters[0] == adapters[1]


def test_an_adapter_gone_since_the_query_set_was_built_is_one_line_before_training(world, tmp_path):
    import shutil

    from etr_hub.registry import Registry

    init_world(world)
    adapter = tmp_path / "astronomy-adapter"
    shutil.copytree(world["expert:astronomy"], adapter)
    build = ("query-set", "build", "astronomy", "--expert", str(adapter), "--data", str(world["data"]))
    assert invoke(*build, "--rule", "labelled", "--label", "astronomy", "--size", "20").returncode == 0
    shutil.rmtree(adapter)
    r = invoke("train-token", "astronomy", "--out", str(tmp_path / "bundle"))
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 1 and len(errors) == 1 and "is not there any more" in errors[0], r.stderr
    assert Registry.open().list_experts() == [] and not (tmp_path / "bundle").exists()

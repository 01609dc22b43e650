"""The shipped experts in plugins/ (six MMLU subjects and the skill experts): complete, valid
bundles that `expert add` accepts, one after another in one registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etr_hub.eval.mmlu import MMLU_EXPERT_SUBJECTS
from recipes.skills.tasks import SKILLS

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
FAMILIES = {"mmlu": list(MMLU_EXPERT_SUBJECTS), "skills": list(SKILLS)}
ALL = FAMILIES["mmlu"] + FAMILIES["skills"]
SHIPPED = [s for s in ALL if (PLUGINS / s / "expert.json").is_file()]  # a missing one fails below
MMLU = [s for s in SHIPPED if s in FAMILIES["mmlu"]]


def test_the_six_mmlu_experts_and_only_known_experts_are_shipped():
    assert FAMILIES["mmlu"] == MMLU
    assert SHIPPED[len(MMLU) :], "no skill expert is shipped"
    assert sorted(p.name for p in PLUGINS.iterdir() if p.is_dir()) == sorted(SHIPPED)


@pytest.mark.parametrize("subject", SHIPPED)
def test_bundle_is_complete_and_its_hashes_match(subject):
    from safetensors.torch import load_file

    from etr_hub.bundle import load_bundle
    from etr_hub.store import sha256_file

    root = PLUGINS / subject
    bundle = load_bundle(root)  # the same validation `expert add` runs (token sha256, shape, query set, adapter)
    m = bundle.manifest
    assert m.name == subject and m.label == subject and m.description
    assert sha256_file(root / m.token.file) == m.token.sha256
    assert m.token.shape == (1, 576) and m.meta.hidden_size == 576
    assert (
        m.expert.kind == "peft" and m.expert.path == "adapter" and m.expert.base is None
    )  # an adapter on the meta model
    assert m.query_set is not None and sha256_file(root / m.query_set.file) == m.query_set.sha256
    rows = [json.loads(line) for line in (root / m.query_set.file).read_text().splitlines()]
    assert len(rows) == m.query_set.size >= 40
    assert m.model_card == "README.md" and (root / "README.md").read_text().startswith(f"# {subject}")
    weights = load_file(str(root / "adapter" / "adapter_model.safetensors"))
    assert {str(t.dtype) for t in weights.values()} <= {"torch.float16", "torch.bfloat16"}
    cfg = json.loads((root / "adapter" / "adapter_config.json").read_text())
    assert not Path(
        cfg["base_model_name_or_path"]
    ).exists()  # not a local path: etr-hub reads it as "on the meta model"


@pytest.mark.parametrize("family,limit_mb", [("mmlu", 8), ("skills", 24)])
def test_shipped_files_are_small(family, limit_mb):
    total = sum(p.stat().st_size for s in FAMILIES[family] for p in (PLUGINS / s).rglob("*") if p.is_file())
    assert 0 < total < limit_mb * 2**20


@pytest.mark.parametrize("skill", [s for s in SHIPPED if s in FAMILIES["skills"]])
def test_skill_query_sets_were_chosen_by_the_loss_gap_rule(skill):
    """The paper's rule (loss gap > τ) on one mixed pool, no labels used to choose: the label only measures purity."""
    qs = json.loads((PLUGINS / skill / "expert.json").read_text())["query_set"]
    # the gap is taken against the better of the meta model and the other shipped skill experts (`--versus`)
    rule, others = qs["selection_rule"], [s for s in SHIPPED[len(MMLU) :] if s != skill]
    assert rule.startswith("min(loss_meta, ") and rule.endswith(") - loss_expert > tau") and qs["tau"] > 0
    assert all(f"loss[peft:{other}]" in rule for other in others) and "/" not in rule, rule  # no builder paths
    assert qs["label"] == skill and qs["purity"] >= 0.9
    assert qs["source"]["n_pairs"] > qs["size"] >= 40  # chosen from a larger pool


@pytest.mark.parametrize("skill", [s for s in SHIPPED if s in FAMILIES["skills"]])
def test_skill_bundles_declare_the_decoding_they_were_measured_with(skill):
    from etr_hub.bundle import load_bundle

    sampling = load_bundle(PLUGINS / skill).manifest.sampling
    assert sampling is not None and sampling.declared() == {"temperature": 0.0, "repetition_penalty": 1.0}


def test_expert_add_accepts_all_of_them(registry):
    m = json.loads((PLUGINS / SHIPPED[0] / "expert.json").read_text())["meta"]
    registry.register_meta(
        reference={"kind": "embedded", "name": "smollm2-135m-instruct"},
        display=m["reference"],
        fingerprint=m["fingerprint"],
        hidden_size=m["hidden_size"],
        vocab_size=m["vocab_size"],
    )
    for subject in SHIPPED:
        row = registry.add_expert(PLUGINS / subject)
        assert row.label == subject
    assert sorted(e.name for e in registry.list_experts(enabled_only=True)) == sorted(SHIPPED)


def test_shipped_adapters_leave_the_lower_layers_alone():
    """MMLU experts adapt the last 8 of 30 layers, skills the last 16, so a switch continues the
    meta model's cache below them (generation/shared_prefix.py) instead of recomputing the prompt
    in every layer."""
    from etr_hub.backends import ExpertSpec, meta_layer_to_keep
    from etr_hub.models.refs import ModelRef

    def specs(names):
        return [ExpertSpec(s, ModelRef(kind="peft", path=str(PLUGINS / s / "adapter"))) for s in names]

    assert meta_layer_to_keep(specs(MMLU)) == 22
    assert meta_layer_to_keep(specs(SHIPPED)) == (14 if len(SHIPPED) > len(MMLU) else 22)

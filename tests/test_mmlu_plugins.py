"""The six shipped MMLU experts in plugins/: complete, valid bundles that `expert add` accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etr_hub.eval.mmlu import MMLU_EXPERT_SUBJECTS

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
SHIPPED = [s for s in MMLU_EXPERT_SUBJECTS if (PLUGINS / s / "expert.json").is_file()]  # a missing one fails below


def test_all_six_are_shipped():
    assert list(MMLU_EXPERT_SUBJECTS) == SHIPPED


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


def test_shipped_files_are_small():
    total = sum(p.stat().st_size for s in SHIPPED for p in (PLUGINS / s).rglob("*") if p.is_file())
    assert total < 8 * 2**20


def test_expert_add_accepts_all_six(registry):
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
    assert sorted(e.name for e in registry.list_experts(enabled_only=True)) == SHIPPED


def test_shipped_adapters_leave_the_lower_layers_alone():
    """Adapted in the last 8 of 30 layers only, so a switch continues the meta model's cache
    below them (generation/shared_prefix.py) instead of recomputing the prompt in every layer."""
    from etr_hub.backends import ExpertSpec, meta_layer_to_keep
    from etr_hub.models.refs import ModelRef

    specs = [ExpertSpec(s, ModelRef(kind="peft", path=str(PLUGINS / s / "adapter"))) for s in SHIPPED]
    assert meta_layer_to_keep(specs) == 22

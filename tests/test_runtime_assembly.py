"""W_E assembly from the registry: which enabled experts join, in which order, and why others are skipped."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from sqlmodel import select

from etr_hub.models.refs import ModelRef
from etr_hub.registry.tables import MetaModel
from etr_hub.runtime.assembly import assemble
from tests.helpers import FAKE_FP, HIDDEN
from tests.runtime_support import add_expert

LOCAL = ModelRef(kind="local", path="/models/expert")
REMOTE = ModelRef(kind="openai", url="http://127.0.0.1:9/v1", model="m")
OTHER_FP = "b" * 64


def row(seed: int, hidden: int = HIDDEN) -> torch.Tensor:
    return torch.randn(1, hidden, generator=torch.Generator().manual_seed(seed))


def _set_meta_hidden(registry, hidden: int) -> None:
    with registry.session(write=True) as s:
        s.exec(select(MetaModel).where(MetaModel.fingerprint == FAKE_FP)).one().hidden_size = hidden


def damage_disabled(registry, name):
    add_expert(registry, name, row(1), LOCAL, fingerprint=FAKE_FP, hidden=HIDDEN, vocab=100)
    registry.set_enabled(name, False)


def damage_other_meta(registry, name):
    """Registered while another meta model was active; then the original came back."""
    registry.register_meta(
        reference={"kind": "local", "path": "/other"},
        display="other",
        fingerprint=OTHER_FP,
        hidden_size=HIDDEN,
        vocab_size=100,
    )
    add_expert(registry, name, row(2), LOCAL, fingerprint=OTHER_FP, hidden=HIDDEN, vocab=100)
    registry.register_meta(
        reference={"kind": "local", "path": "/nonexistent/tiny"},
        display="tiny-test-meta",
        fingerprint=FAKE_FP,
        hidden_size=HIDDEN,
        vocab_size=100,
    )


def damage_hidden_size(registry, name):
    """A registry that recorded a wrong hidden size for this fingerprint accepted a narrower token."""
    _set_meta_hidden(registry, 8)
    add_expert(registry, name, row(3, hidden=8), LOCAL, fingerprint=FAKE_FP, hidden=8, vocab=100)
    _set_meta_hidden(registry, HIDDEN)


def damage_tampered_token(registry, name):
    add_expert(registry, name, row(4), LOCAL, fingerprint=FAKE_FP, hidden=HIDDEN, vocab=100)
    save_file({"expert_token": row(99)}, str(registry.abspath(registry.get_expert(name).token_path)))


def damage_deleted_token(registry, name):
    add_expert(registry, name, row(5), LOCAL, fingerprint=FAKE_FP, hidden=HIDDEN, vocab=100)
    registry.abspath(registry.get_expert(name).token_path).unlink()


@pytest.mark.parametrize(
    "damage, reason",
    [
        (damage_disabled, None),  # disabled experts are simply not part of W_E
        (damage_other_meta, "trained against meta model bbbbbbbbbbbb"),
        (damage_hidden_size, "token dimension 8 ≠ the meta model's hidden size 16"),
        (damage_tampered_token, "does not match the recorded"),
        (damage_deleted_token, "missing from the store"),
    ],
)
def test_assembly_skips_what_does_not_fit(registry, fake_meta, damage, reason):
    add_expert(registry, "good", row(10), LOCAL, fingerprint=FAKE_FP, hidden=HIDDEN, vocab=100)
    damage(registry, "victim")
    add_expert(registry, "remote", row(11), REMOTE, fingerprint=FAKE_FP, hidden=HIDDEN, vocab=100)
    assembly = assemble(registry, fingerprint=FAKE_FP, hidden_size=HIDDEN)
    assert [e.name for e in assembly.experts] == ["good", "remote"]
    assert [e.backend for e in assembly.experts] == ["local", "remote"]
    assert torch.equal(assembly.w_e, torch.cat([row(10), row(11)]))  # (N, C), rows in expert order
    if reason is None:
        assert assembly.skipped == []
    else:
        [(name, why)] = assembly.skipped
        assert name == "victim" and reason in why and "\n" not in why


def test_lora_adapter_missing_from_store_is_skipped(registry, fake_meta, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    save_file({"lora_A": torch.zeros(2, HIDDEN)}, str(adapter / "adapter_model.safetensors"))
    add_expert(registry, "lora", row(1), LOCAL, fingerprint=FAKE_FP, hidden=HIDDEN, vocab=100, adapter=adapter)
    ok = assemble(registry, fingerprint=FAKE_FP, hidden_size=HIDDEN)
    assert [e.backend for e in ok.experts] == ["lora"] and ok.experts[0].reference.startswith(
        "peft:" + str(registry.store.root)
    )
    import shutil

    shutil.rmtree(registry.abspath(registry.get_expert("lora").adapter_path))
    assert assemble(registry, fingerprint=FAKE_FP, hidden_size=HIDDEN).skipped == [
        ("lora", "its adapter folder is missing from the store — re-add the bundle")
    ]


def test_enable_disable_take_effect_at_next_assembly(registry, fake_meta):
    add_expert(registry, "a", row(1), LOCAL, fingerprint=FAKE_FP, hidden=HIDDEN, vocab=100)
    add_expert(registry, "b", row(2), LOCAL, fingerprint=FAKE_FP, hidden=HIDDEN, vocab=100)
    first = assemble(registry, fingerprint=FAKE_FP, hidden_size=HIDDEN)
    registry.set_enabled("a", False)
    assert [e.name for e in first.experts] == ["a", "b"]  # an open hub keeps its W_E
    assert [e.name for e in assemble(registry, fingerprint=FAKE_FP, hidden_size=HIDDEN).experts] == ["b"]


def test_empty_registry_gives_an_empty_matrix(registry, fake_meta):
    assembly = assemble(registry, fingerprint=FAKE_FP, hidden_size=HIDDEN)
    assert assembly.w_e.shape == (0, HIDDEN) and assembly.experts == [] and assembly.skipped == []

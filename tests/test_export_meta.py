"""`etr-hub export meta OUT`: a plain Hugging Face checkpoint whose next-token distribution at the
routing position is the hub's softmax over words and experts, loaded with transformers alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from etr_hub.models.refs import ModelRef
from tests.helpers import invoke, run_cli
from tests.runtime_support import QUESTION, add_expert, meta_and_winning_row

PROMPTS = [
    QUESTION,
    [{"role": "user", "content": "what about the comet 12?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
]


def hub_distribution(hub, messages) -> torch.Tensor:
    """(V + N,) the hub's softmax([W_V; W_E] h) at the routing position of `messages` (eq. 1)."""
    from etr_hub.generation.runner import CausalRunner
    from etr_hub.models.chat import routing_prompt_ids

    ids = routing_prompt_ids(hub.meta.tokenizer, messages)[0]
    runner = CausalRunner(hub.meta.model)
    with torch.inference_mode():
        h = runner.feed(ids)  # (1, C)
        logits = torch.cat([runner.word_logits(h).reshape(-1), (h @ hub.w_e_t).reshape(-1)])  # (V + N,)
    return torch.softmax(logits.double(), dim=-1)


def exported_distribution(model, tokenizer, messages) -> torch.Tensor:
    """(V + N,) the exported checkpoint's next-token softmax, with transformers only (its chat template)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids["input_ids"]])).logits[0, -1]  # (V + N,)
    return torch.softmax(logits.double(), dim=-1)


@pytest.fixture
def tiny_hub(registry, tmp_path):
    """A tiny meta model (tied embeddings, 272 rows but a 264-token tokenizer) with two experts:
    `astronomy` wins at QUESTION's routing position, `law` is a random row."""
    path, meta_row, row = meta_and_winning_row(registry, tmp_path)
    expert = ModelRef(kind="local", path=str(path))
    add_expert(registry, "astronomy", row, expert, fingerprint=meta_row.fingerprint, hidden=32)
    law = torch.randn(1, 32, generator=torch.Generator().manual_seed(3))
    add_expert(registry, "law", law, expert, fingerprint=meta_row.fingerprint, hidden=32)
    return path, meta_row


def test_export_reproduces_the_routing_distribution(tiny_hub, registry, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from etr_hub.runtime import Hub

    _, meta_row = tiny_hub
    out = tmp_path / "exported"
    r = invoke("export", "meta", str(out), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    manifest = json.loads((out / "etr_hub_export.json").read_text())
    assert report["meta_fingerprint"] == manifest["meta_fingerprint"] == meta_row.fingerprint
    assert manifest["word_vocab_size"] == 272 and manifest["reserved_tokens"] == 8  # 264 tokens padded to 272 rows
    experts = {e.name: e for e in registry.list_experts()}
    assert [(e["name"], e["token"], e["token_id"], e["version"], e["token_sha256"]) for e in manifest["experts"]] == [
        (n, f"<|expert:{n}|>", 272 + k, experts[n].version, experts[n].token_sha256)
        for k, n in enumerate(["astronomy", "law"])
    ]
    assert not list(tmp_path.glob(".exported*"))  # the temporary folder was renamed into place

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert model.config.vocab_size == 274 and not model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    for entry in manifest["experts"]:  # one ordinary (not special) token each, kept in decoded text
        assert tokenizer(entry["token"], add_special_tokens=False)["input_ids"] == [entry["token_id"]]
        assert tokenizer.decode([5, entry["token_id"]], skip_special_tokens=True).endswith(entry["token"])
    assert (out / "generation_config.json").is_file() and "<|im_start|>" in tokenizer.chat_template

    hub = Hub.open()
    try:
        for messages in PROMPTS:
            p_hub, p_out = hub_distribution(hub, messages), exported_distribution(model, tokenizer, messages)
            assert p_out.shape == p_hub.shape == (274,)
            torch.testing.assert_close(p_out, p_hub, rtol=1e-5, atol=1e-7)
            assert int(p_out.argmax()) == int(p_hub.argmax())
        assert int(exported_distribution(model, tokenizer, QUESTION).argmax()) == 272  # astronomy's token wins
    finally:
        hub.close()
    # greedy decoding in plain transformers emits the expert token first, as the text the router reads
    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=1, do_sample=False)[0, ids["input_ids"].shape[1] :]
    assert tokenizer.decode(generated, skip_special_tokens=True) == "<|expert:astronomy|>"


def test_export_refuses_bad_output_folders(tiny_hub, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    r = invoke("export", "meta", str(full))
    assert r.returncode == 1 and "is not empty" in r.stderr and "--force" in r.stderr
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = invoke("export", "meta", str(a_file))
    assert r.returncode == 1 and "is not a folder" in r.stderr

    r = invoke("export", "meta", str(full), "--force")  # replaces it, whole
    assert r.returncode == 0, r.stderr
    assert (full / "etr_hub_export.json").is_file() and not (full / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".full")) == []

    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("export", "meta", str(empty)).returncode == 0  # an empty folder is fine


def test_export_refuses_an_unwritable_folder(tiny_hub, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    r = invoke("export", "meta", str(a_file / "out"))  # a parent that is no folder
    assert r.returncode == 1 and "cannot write to" in r.stderr and a_file.read_text() == "x"
    if os.geteuid() == 0:
        return  # root writes anywhere: the permission case below needs another user
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        r = invoke("export", "meta", str(locked / "out"))
        assert r.returncode == 1 and "cannot write" in r.stderr and list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_export_refuses_without_enabled_experts(registry, tmp_path):
    from tests.runtime_support import meta_and_winning_row as setup

    setup(registry, tmp_path)
    r = run_cli("export", "meta", str(tmp_path / "out"))  # the real console script: one line, no traceback
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "no enabled expert" in r.stderr and "etr-hub expert add" in r.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_export_usage_errors(tmp_path):
    r = invoke("export", "meta")
    assert r.returncode == 2
    r = invoke("export", "gguf", str(tmp_path / "x"))
    assert r.returncode == 2


@pytest.mark.slow
def test_export_of_the_embedded_default_reproduces_routing(registry, tmp_path):
    """SmolLM2-135M-Instruct (tied embeddings, 49,152 rows): the exported checkpoint's distribution
    at the routing position is the hub's, on the converted embedded model."""
    import platformdirs
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from etr_hub.registry.meta import register_meta_model
    from etr_hub.runtime import Hub
    from etr_hub.runtime.export import export_meta

    converted = Path(platformdirs.user_data_dir("etr-hub")) / "models" / "smollm2-135m-instruct"
    if not (converted / "model.safetensors").is_file():
        pytest.skip(f"the embedded default is not converted at {converted} (run `etr-hub init` once)")
    ref = ModelRef(kind="local", path=str(converted))
    meta_row = register_meta_model(registry, ref)
    gen = torch.Generator().manual_seed(0)
    for name in ("astronomy", "law", "cooking"):
        row = torch.randn(1, 576, generator=gen) * 0.5
        add_expert(registry, name, row, ref, fingerprint=meta_row.fingerprint, hidden=576, vocab=49152)
    result = export_meta(tmp_path / "smollm2-etr", registry=registry)
    assert [t.token_id for t in result.tokens] == [49152, 49153, 49154] and result.reserved_tokens == 0
    model = AutoModelForCausalLM.from_pretrained(result.out, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.out, local_files_only=True)
    hub = Hub.open(registry)
    try:
        for text in ("What causes the phases of the Moon?", "Tell me a fun fact about dogs."):
            messages = [{"role": "user", "content": text}]
            p_hub, p_out = hub_distribution(hub, messages), exported_distribution(model, tokenizer, messages)
            torch.testing.assert_close(p_out, p_hub, rtol=1e-4, atol=1e-7)
            assert int(p_out.argmax()) == int(p_hub.argmax())
    finally:
        hub.close()

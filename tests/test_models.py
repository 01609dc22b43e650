"""etr_hub.models: references, safe loading, fingerprints, chat token ids, the default meta model."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from etr_hub.errors import ModelLoadError
from etr_hub.models import default_meta
from etr_hub.models.chat import plain_prompt, prompt_and_response_ids, routing_prompt_ids, to_ids
from etr_hub.models.fingerprint import meta_fingerprint, output_embedding
from etr_hub.models.loading import load_causal_lm
from etr_hub.models.refs import ModelRef
from tests.tiny_models import make_tiny_llama, make_tiny_lora

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """conftest's hub_home gives each test its own ETR_HUB_HOME; never reach the Hub either."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ETR_HUB_ALLOW_DOWNLOAD", raising=False)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> dict[str, Path]:
    """Tiny models and adapters on disk, shared by all tests (they are never modified)."""
    root = tmp_path_factory.mktemp("zoo")
    tiny = make_tiny_llama(root / "tiny", seed=0)
    paths = {
        "tiny": tiny,
        "tiny_seed1": make_tiny_llama(root / "tiny_seed1", seed=1),
        "plain": make_tiny_llama(root / "plain", chat_template=False),
        "lora_local": make_tiny_lora(tiny, root / "lora-local", seed=1),
        "lora_meta": make_tiny_lora(tiny, root / "lora-meta", seed=2, base_model_name="Org/Some-Hub-Model"),
        "gguf_file": root / "m.Q4_0.gguf",
        "gguf_dir": root / "ggufdir",
        "empty": root / "empty",
    }
    paths["gguf_file"].write_bytes(b"GGUF")
    paths["gguf_dir"].mkdir()
    (paths["gguf_dir"] / "only.gguf").write_bytes(b"GGUF")
    paths["empty"].mkdir()
    return paths


def fill(value, zoo: dict[str, Path]):
    """Put the zoo's (resolved) paths into "{name}" placeholders, also inside nested dicts."""
    if isinstance(value, dict):
        return {k: fill(v, zoo) for k, v in value.items()}
    return value.format(**{k: str(v.resolve()) for k, v in zoo.items()})


# --- references -------------------------------------------------------------------------------

GOOD_REFS = [
    ("embedded:smollm2-135m-instruct", {"kind": "embedded", "name": "smollm2-135m-instruct"}),
    ("smollm2", {"kind": "embedded", "name": "smollm2-135m-instruct"}),
    ("default", {"kind": "embedded", "name": "smollm2-135m-instruct"}),
    ("embedded:default", {"kind": "embedded", "name": "smollm2-135m-instruct"}),
    (
        f"hf:HuggingFaceTB/SmolLM2-135M-Instruct@{SHA}",
        {"kind": "hf", "repo_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": SHA},
    ),
    (f"hf:org/name@{SHA.upper()}", {"kind": "hf", "repo_id": "org/name", "revision": SHA}),
    (
        "openai:http://localhost:8000/v1#my-model",
        {"kind": "openai", "url": "http://localhost:8000/v1", "model": "my-model"},
    ),
    (
        "openai:https://api.example.com/v1/#org/model:7b",
        {"kind": "openai", "url": "https://api.example.com/v1", "model": "org/model:7b"},
    ),
    ("{tiny}", {"kind": "local", "path": "{tiny}"}),
    ("local:{tiny}", {"kind": "local", "path": "{tiny}"}),
    ("{lora_local}", {"kind": "peft", "path": "{lora_local}", "base": {"kind": "local", "path": "{tiny}"}}),
    ("{lora_meta}", {"kind": "peft", "path": "{lora_meta}"}),
    ("peft:{lora_meta}", {"kind": "peft", "path": "{lora_meta}"}),
    ("{gguf_file}", {"kind": "gguf", "path": "{gguf_file}"}),
    ("{gguf_dir}", {"kind": "gguf", "path": "{gguf_dir}", "gguf_file": "only.gguf"}),
]


@pytest.mark.parametrize(("text", "expected"), GOOD_REFS)
def test_parse_good(text, expected, zoo):
    ref = ModelRef.parse(fill(text, zoo))
    want = fill(expected, zoo)
    assert ref.model_dump(exclude_none=True) == want
    # round trip, both as Python objects and as JSON (what manifests and the registry store)
    assert ModelRef.model_validate(ref.model_dump(exclude_none=True)) == ref
    assert ModelRef.model_validate_json(ref.model_dump_json(exclude_none=True)) == ref
    assert "\n" not in ref.display() and ref.display()


BAD_REFS = [
    ("", "empty"),
    ("hf:org/name", "no revision"),
    ("hf:org/name@main", "not a full commit hash"),
    (f"hf:not-a-repo@{SHA}", "not a Hugging Face repo id"),
    ("openai:localhost:8000/v1#m", "not an http(s) URL"),
    ("openai:http://localhost:8000/v1", "names no model"),
    ("embedded:gpt-5", "unknown embedded model"),
    ("/no/such/model/anywhere", "no such file or folder"),
    ("peft:{tiny}", "not a PEFT adapter"),
    ("local:{empty}", "no config.json"),
    ("{empty}", "cannot tell what kind"),
]


@pytest.mark.parametrize(("text", "message"), BAD_REFS)
def test_parse_bad(text, message, zoo):
    with pytest.raises(ModelLoadError) as info:
        ModelRef.parse(fill(text, zoo))
    assert message in info.value.problem
    assert info.value.fix and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "local"},  # no path
        {"kind": "local", "path": "/x", "repo_id": "org/name"},  # field of another kind
        {"kind": "hf", "repo_id": "org/name", "revision": "main"},  # not pinned
        {"kind": "embedded", "name": "nope"},
        {"kind": "openai", "url": "ftp://x", "model": "m"},
        {"kind": "local", "path": "/x", "colour": "red"},  # extra="forbid"
        {"kind": "peft", "path": "/a", "base": {"kind": "local"}},  # nested refs are validated too
    ],
)
def test_validation_rejects(fields):
    with pytest.raises(ValidationError):
        ModelRef.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "shown"),
    [
        ({"kind": "hf", "repo_id": "org/name", "revision": SHA}, f"hf:org/name@{SHA[:12]}"),
        ({"kind": "embedded", "name": "smollm2-135m-instruct"}, "embedded:smollm2-135m-instruct"),
        ({"kind": "local", "path": "/m"}, "local:/m"),
        ({"kind": "gguf", "path": "/d", "gguf_file": "x.gguf"}, "gguf:/d/x.gguf"),
        ({"kind": "peft", "path": "/a"}, "peft:/a (on meta)"),
        ({"kind": "peft", "path": "/a", "base": {"kind": "local", "path": "/m"}}, "peft:/a (on local:/m)"),
        ({"kind": "openai", "url": "http://h:1/v1", "model": "m", "timeout_s": 5}, "openai:http://h:1/v1#m"),
    ],
)
def test_display(fields, shown):
    assert ModelRef.model_validate(fields).display() == shown


def test_resolved_makes_bundle_paths_absolute():
    ref = ModelRef(kind="peft", path="adapter", base=ModelRef(kind="local", path="base"))
    got = ref.resolved("/bundles/x")
    assert (got.path, got.base.path) == ("/bundles/x/adapter", "/bundles/x/base")
    assert ModelRef(kind="local", path="/abs").resolved("/b").path == "/abs"


def test_refs_import_without_torch():
    code = "import sys, etr_hub.models.refs; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- loading ------------------------------------------------------------------------------------


def test_load_local_is_frozen_with_pad(zoo):
    loaded = load_causal_lm(ModelRef.parse(str(zoo["tiny"])))
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<|im_end|>"
    assert loaded.base_shares_meta is False and loaded.adapter_name is None


def _logits(model, ids=(1, 60, 61, 62, 2)):
    import torch

    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits


def test_peft_on_meta_shares_weights_and_leaves_meta_untouched(zoo):
    import torch

    meta = load_causal_lm(ModelRef.parse(str(zoo["tiny"])), role="meta")
    before = _logits(meta.model)
    expert = load_causal_lm(ModelRef.parse(str(zoo["lora_meta"])), meta=meta)
    assert expert.base_shares_meta and expert.adapter_name == "lora_meta"
    meta_params = dict(meta.model.named_parameters())
    shared = 0
    for name, param in expert.model.named_parameters():
        if "lora_" in name:
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert param.data_ptr() == meta_params[plain].data_ptr(), name
        shared += 1
    assert shared == len(meta_params)
    assert not any("lora_" in n for n, _ in meta.model.named_modules())  # LoRA went into the copy
    assert torch.equal(_logits(meta.model), before)
    assert not torch.allclose(_logits(expert.model), before)  # the adapter does something


@pytest.mark.parametrize(("adapter", "meta_is_base"), [("lora_local", False), ("lora_local", True)])
def test_peft_with_own_base(zoo, adapter, meta_is_base):
    ref = ModelRef.parse(str(zoo[adapter]))
    meta_path = zoo["tiny"] if meta_is_base else zoo["tiny_seed1"]
    meta = load_causal_lm(ModelRef.parse(str(meta_path)))
    expert = load_causal_lm(ref, meta=meta)
    # a base equal to the meta ref is shared, any other base is loaded separately
    assert expert.base_shares_meta is meta_is_base
    assert not any(p.requires_grad for p in expert.model.parameters())


def test_load_hf_from_local_cache_only(zoo, tmp_path, monkeypatch):
    """An hf ref resolves to a cached snapshot; pickle files in it are never even considered."""
    import huggingface_hub

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / SHA
    snapshot.parent.mkdir(parents=True)
    _copy_without(zoo["tiny"], snapshot, drop="")
    (snapshot / "pytorch_model.bin").write_bytes(b"never read")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load_causal_lm(ModelRef.parse(f"hf:org/tiny@{SHA}"))
    reference = load_causal_lm(ModelRef.parse(str(zoo["tiny"])))
    assert meta_fingerprint(loaded.model) == meta_fingerprint(reference.model)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_causal_lm(ModelRef.parse(f"hf:org/tiny@{SHA[::-1]}"))


def test_local_folder_with_adapter_is_refused(zoo, tmp_path):
    folder = _copy_without(zoo["tiny"], tmp_path / "m", drop="")
    (folder / "adapter_config.json").write_bytes((zoo["lora_meta"] / "adapter_config.json").read_bytes())
    with pytest.raises(ModelLoadError, match="load it as peft:"):
        load_causal_lm(ModelRef(kind="local", path=str(folder)))


def test_peft_on_meta_needs_meta(zoo):
    with pytest.raises(ModelLoadError, match="no meta model was given"):
        load_causal_lm(ModelRef.parse(str(zoo["lora_meta"])))


def _copy_without(src: Path, dst: Path, drop: str) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name != drop:
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize(
    ("source", "drop", "pickle_name", "message"),
    [
        ("tiny", "model.safetensors", "pytorch_model.bin", "only pickle weights (pytorch_model.bin)"),
        ("tiny", "model.safetensors", None, "no *.safetensors weights"),
        ("lora_meta", "adapter_model.safetensors", "adapter_model.bin", "never unpickles adapter_model.bin"),
    ],
)
def test_refuses_pickle_weights(zoo, tmp_path, source, drop, pickle_name, message):
    folder = _copy_without(zoo[source], tmp_path / "m", drop)
    if pickle_name:
        (folder / pickle_name).write_bytes(b"not even a pickle: loading it would fail differently")
    ref = ModelRef.parse(str(folder))
    meta = load_causal_lm(ModelRef.parse(str(zoo["tiny"])))
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(ref, meta=meta)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_broken_weights_give_one_line_error(zoo, tmp_path):
    folder = _copy_without(zoo["tiny"], tmp_path / "m", "model.safetensors")
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(ModelRef.parse(str(folder)))
    assert info.value.problem.startswith(f"could not load expert model local:{folder}: ")
    assert "\n" not in str(info.value) and info.value.fix


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (ModelRef(kind="openai", url="http://h/v1", model="m"), "not a local model"),
        (
            ModelRef(kind="hf", repo_id="etr-hub-test/does-not-exist", revision=SHA),
            "not in the local Hugging Face cache",
        ),
        (ModelRef(kind="gguf", path="/no/such.gguf"), "GGUF file not found"),
    ],
)
def test_unloadable_refs(ref, message):
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(")):
        load_causal_lm(ref)


def test_unknown_dtype(zoo):
    with pytest.raises(ModelLoadError, match="`dtype=int3` is not a dtype — use auto, float32, bfloat16 or float16"):
        load_causal_lm(ModelRef.parse(str(zoo["tiny"])), dtype="int3")


# --- fingerprint -------------------------------------------------------------------------------


def test_fingerprint_stable_and_distinct(zoo):
    first = load_causal_lm(ModelRef.parse(str(zoo["tiny"])))
    again = load_causal_lm(ModelRef.parse(str(zoo["tiny"])))
    other = load_causal_lm(ModelRef.parse(str(zoo["tiny_seed1"])))
    weight = output_embedding(first.model)
    assert tuple(weight.shape) == (272, 32)
    assert meta_fingerprint(first.model) == meta_fingerprint(again.model)
    assert meta_fingerprint(first.model) != meta_fingerprint(other.model)
    assert meta_fingerprint(first.model) == hashlib.sha256(weight.float().contiguous().numpy().tobytes()).hexdigest()
    # a LoRA adapter on attention leaves the LM head, hence the fingerprint, alone
    expert = load_causal_lm(ModelRef.parse(str(zoo["lora_meta"])), meta=first)
    assert meta_fingerprint(expert.model) == meta_fingerprint(first.model)


# --- chat token ids ---------------------------------------------------------------------------

CONVERSATIONS = [
    "What is the capital of France?",
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3? ünïcode 🙂"},
    ],
]


@pytest.fixture(scope="module")
def tokenizers(zoo):
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(str(zoo[name])) for name in ("tiny", "plain")}


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_routing_prompt_with_template(tokenizers, messages):
    tok = tokenizers["tiny"]
    ids, used = routing_prompt_ids(tok, messages)
    assert used is True
    assert tok.decode(ids).endswith("<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("response", ["Paris.", " leading space and\nnewline", "ünïcode 🙂"])
def test_prompt_and_response_prefix_property(tokenizers, messages, response):
    tok = tokenizers["tiny"]
    prompt, body = prompt_and_response_ids(tok, messages, response)
    assert prompt == routing_prompt_ids(tok, messages)[0]
    assert body[-1] == tok.eos_token_id and body.count(tok.eos_token_id) == 1
    assert tok.decode(body) == response + "<|im_end|>"
    as_list = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
    full = to_ids(tok.apply_chat_template([*as_list, {"role": "assistant", "content": response}]))
    assert full[: len(prompt) + len(body)] == prompt + body  # what the model sees when trained on it


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_fallback_without_template(tokenizers, messages):
    tok = tokenizers["plain"]
    ids, used = routing_prompt_ids(tok, messages)
    assert used is False
    as_list = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
    assert tok.decode(ids) == plain_prompt(as_list)
    assert tok.decode(ids).endswith("\nAssistant:") or tok.decode(ids).startswith("User:")
    prompt, body = prompt_and_response_ids(tok, messages, "Paris.")
    assert prompt == ids
    assert tok.decode(body) == " Paris.<|im_end|>"


def test_plain_prompt_format():
    assert plain_prompt([{"role": "user", "content": "hi"}]) == "User: hi\nAssistant:"


@pytest.mark.parametrize(
    "encoded",
    [[5, 6, 7], {"input_ids": [5, 6, 7]}, {"input_ids": [[5, 6, 7]]}, "tensor", "batch_encoding"],
)
def test_to_ids_normalises(encoded):
    import torch
    from transformers import BatchEncoding

    if encoded == "tensor":
        encoded = torch.tensor([[5, 6, 7]])
    elif encoded == "batch_encoding":
        encoded = BatchEncoding({"input_ids": torch.tensor([5, 6, 7])})
    assert to_ids(encoded) == [5, 6, 7]


# --- the embedded default meta model -------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [(None, "is not a file"), (b"fake wheel", "has sha256")])
def test_default_meta_rejects_bad_wheel(tmp_path, monkeypatch, content, message):
    wheel = tmp_path / default_meta.WHEEL_FILE
    if content is not None:
        wheel.write_bytes(content)
    monkeypatch.setenv(default_meta.WHEEL_ENV, str(wheel))
    with pytest.raises(ModelLoadError, match=message):
        default_meta.ensure_default_meta()
    assert not default_meta.default_meta_dir().exists()


@pytest.mark.slow
def test_convert_default_meta(hub_home):
    wheel = os.environ.get(default_meta.WHEEL_ENV)
    if not wheel:
        pytest.skip(f"set {default_meta.WHEEL_ENV} to {default_meta.WHEEL_FILE} to run the real conversion")
    steps: list[str] = []
    start = time.perf_counter()
    path = default_meta.ensure_default_meta(status=steps.append)
    converted_s = time.perf_counter() - start
    assert path == hub_home / "models" / "smollm2-135m-instruct" and default_meta.is_converted(path)
    assert any("de-quantizing" in s for s in steps)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp dirs left behind
    source = json.loads((path / default_meta.SOURCE_FILE).read_text())
    assert source["wheel_sha256"] == default_meta.WHEEL_SHA256 and source["gguf_sha256"] == default_meta.GGUF_SHA256

    start = time.perf_counter()
    assert default_meta.ensure_default_meta() == path  # second call: nothing to do
    loaded = load_causal_lm(ModelRef.parse("embedded:smollm2-135m-instruct"), role="meta")
    load_s = time.perf_counter() - start
    print(f"\nconversion {converted_s:.1f} s, load of the converted folder {load_s:.2f} s")
    tok = loaded.tokenizer
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    assert tuple(output_embedding(loaded.model).shape) == (49152, 576)
    assert meta_fingerprint(loaded.model) == source["meta_fingerprint"]
    prompt, _ = routing_prompt_ids(tok, "What is the capital of France?")
    import torch

    out = loaded.model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, len(prompt) :])

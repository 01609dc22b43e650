"""Untrusted bundles (issue #15): code is refused and never run, path and JSON oddities are
one-line BundleErrors, manifest values fit any registry database, and size is limited.

Each table row is a bundle that today's code either accepted or crashed on ("internal error").
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from etr_hub.bundle.io import load_bundle
from etr_hub.errors import BundleError
from tests.helpers import invoke, make_bundle, run_cli, write_manifest

ETR_HUB = Path(__file__).resolve().parents[1] / "etr_hub"


def store_files(home: Path) -> list[str]:
    store = home / "store"
    return (
        sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.name != ".lock") if store.exists() else []
    )


def list_json() -> list[dict]:
    res = invoke("expert", "list", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def assert_refused(res, *words: str, code: int = 2) -> None:
    """One line `error: problem — fix` on stderr, the documented exit code, nothing on stdout."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0], res.stderr
    assert "internal error" not in lines[0] and "Traceback" not in res.stderr and res.stdout == ""
    for w in words:
        assert w in lines[0], (w, lines[0])


def _manifest(root: Path) -> dict:
    return json.loads((root / "expert.json").read_text())


def _edit(**changes):
    def mutate(root: Path) -> None:
        m = _manifest(root)
        for dotted, value in changes.items():
            *path, last = dotted.split("__")
            node = m
            for p in path:
                node = node[p]
            node[last] = value
        write_manifest(root, m)

    return mutate


def _write(rel: str, data: bytes | str):
    def mutate(root: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return mutate


def _raw_manifest(text: str):
    return _write("expert.json", text)


def _query_set(root: Path, data: bytes | str) -> None:
    from etr_hub.store import sha256_file

    _write("query_set.jsonl", data)(root)
    m = _manifest(root)
    m["query_set"]["sha256"], m["query_set"]["size"] = sha256_file(root / "query_set.jsonl"), 1
    write_manifest(root, m)


def _symlink(rel: str, target: str):
    def mutate(root: Path) -> None:
        os.symlink(target, root / rel)

    return mutate


def _manifest_text_replace(old: str, new: str):
    def mutate(root: Path) -> None:
        path = root / "expert.json"
        path.write_text(path.read_text().replace(old, new, 1))

    return mutate


DEEP = "[" * 100_000 + "]" * 100_000
AUTO_MAP = json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}, "model_max_length": 512})

# (id, mutation of a valid LoRA bundle, words the one-line error must hold)
REFUSED = [
    # item 1: code anywhere in a bundle, and configs that make transformers import it
    ("py-in-adapter", _write("adapter/evil.py", "open('/tmp/pwned', 'w')\n"), ["'adapter/evil.py' is code"]),
    ("py-at-top", _write("setup.py", "print(1)\n"), ["'setup.py' is code"]),
    ("pyc", _write("adapter/__pycache__/evil.cpython-311.pyc", b"\x00" * 16), ["evil.cpython-311.pyc' is code"]),
    ("shared-object", _write("adapter/libevil.so", b"\x7fELF" + b"\x00" * 60), ["'adapter/libevil.so' is code"]),
    ("shell-script", _write("install.sh", "#!/bin/sh\nrm -rf ~\n"), ["'install.sh' is code"]),
    (
        "shebang-no-suffix",
        _write("adapter/helper", "#!/usr/bin/env python\nimport os\n"),
        ["'adapter/helper' is a script or an executable"],
    ),
    (
        "elf-no-suffix",
        _write("README", b"\x7fELF\x02\x01\x01" + b"\x00" * 57),
        ["'README' is a script or an executable"],
    ),
    (
        "auto-map-tokenizer",
        _write("adapter/tokenizer_config.json", AUTO_MAP),
        ["'adapter/tokenizer_config.json' has 'auto_map'"],
    ),
    (
        "auto-map-deep",
        _write("adapter/sub/dir/config.json", json.dumps({"a": [{"b": {"auto_map": {"AutoModel": "x.Y"}}}]})),
        ["'adapter/sub/dir/config.json' has 'auto_map'"],
    ),
    (
        "trust-remote-code-tokenizer",
        _write("adapter/tokenizer_config.json", json.dumps({"trust_remote_code": True})),
        ["trust_remote_code"],
    ),
    # item 4: bundle paths and JSON that used to be an internal error
    ("symlink-loop", _symlink("loop", "loop"), ["'loop' is a broken symlink or a symlink loop"]),
    (
        "symlink-loop-token",
        _symlink("tok.safetensors", "tok.safetensors"),
        ["'tok.safetensors' is a broken symlink or a symlink loop"],
    ),
    ("symlinked-folder", _symlink("adapter/again", "."), ["'adapter/again' is a symlinked folder"]),
    ("fifo", lambda root: os.mkfifo(root / "adapter" / "pipe.json"), ["'adapter/pipe.json' is not a regular file"]),
    ("nul-in-token-path", _edit(token__file="token\x00.safetensors"), ["field 'token.file'"]),
    ("nul-in-model-card-path", _edit(model_card="README\x00.md"), ["field 'model_card'"]),
    (
        "adapter-config-not-utf8",
        _write("adapter/adapter_config.json", b'{"peft_type": "LORA", "r": 2, "x": "\xff\xfe"}'),
        ["'adapter/adapter_config.json' is not UTF-8"],
    ),
    (
        "adapter-config-malformed",
        _write("adapter/adapter_config.json", '{"peft_type": "LORA", "r": '),
        ["'adapter/adapter_config.json' is not valid JSON"],
    ),
    (
        "adapter-config-not-object",
        _write("adapter/adapter_config.json", "[1, 2]"),
        ["'adapter/adapter_config.json' must hold a JSON object"],
    ),
    (
        "adapter-config-deep",
        _write("adapter/adapter_config.json", DEEP),
        ["'adapter/adapter_config.json' nests JSON too deeply"],
    ),
    (
        "tokenizer-config-deep",
        _write("adapter/tokenizer_config.json", DEEP),
        ["'adapter/tokenizer_config.json' nests JSON too deeply"],
    ),
    ("manifest-deep", _raw_manifest(DEEP), ["'expert.json' nests JSON too deeply"]),
    (
        "manifest-deep-in-field",
        _manifest_text_replace('"description": "', '"description": ' + "[" * 50_000 + "]" * 50_000 + ', "x": "'),
        ["'expert.json' nests JSON too deeply"],
    ),
    ("manifest-bytes-not-utf8", _write("expert.json", b'{"name": "caf\xe9"}'), ["'expert.json' is not UTF-8"]),
    (
        "query-set-line-deep",
        lambda root: _query_set(root, DEEP + "\n"),
        ["query set query_set.jsonl:1 nests JSON too deeply"],
    ),
    (
        "query-set-not-utf8",
        lambda root: _query_set(root, b'{"query": "caf\xe9"}\n'),
        ["query set query_set.jsonl:1 is not UTF-8"],
    ),
    # item 5: values PostgreSQL refuses (or JSON cannot carry) are refused by the schema everywhere
    ("label-129", _edit(label="x" * 129), ["field 'label'", "at most 128 characters"]),
    ("query-set-label-129", _edit(query_set__label="x" * 129), ["field 'query_set.label'"]),
    ("description-4097", _edit(description="x" * 4097), ["field 'description'"]),
    ("nan-literal", _manifest_text_replace('"tau": 0.5', '"tau": NaN'), ["NaN is not a JSON number"]),
    ("infinity-literal", _manifest_text_replace('"tau": 0.5', '"tau": -Infinity'), ["Infinity is not a JSON number"]),
    ("float-overflow", _manifest_text_replace('"tau": 0.5', '"tau": 1e999'), ["field 'query_set.tau'", "finite"]),
    ("int-over-int32", _edit(query_set__size=2**31), ["field 'query_set.size'"]),
    (
        "int-4301-digits",
        _manifest_text_replace('"seed": 3', '"seed": ' + "9" * 4301),
        ["'expert.json' is not valid JSON"],
    ),
    ("nul-in-description", _edit(description="astro\x00nomy"), ["NUL character"]),
    ("lone-surrogate", _manifest_text_replace('"license": "Apache-2.0"', '"license": "\\ud800"'), ["field 'license'"]),
    (
        "timeout-negative",
        _edit(expert={"kind": "openai", "url": "http://127.0.0.1:1/v1", "model": "m", "timeout_s": -1}),
        ["field 'expert.timeout_s'"],
    ),
]


def _valid_bundle(tmp_path: Path) -> Path:
    root = make_bundle(tmp_path / "bundle", "astronomy", adapter=True, seed=3)
    m = _manifest(root)
    m["query_set"]["label"] = "astronomy"
    write_manifest(root, m)
    return root


@pytest.mark.parametrize("mutate,words", [pytest.param(m, w, id=i) for i, m, w in REFUSED])
def test_bad_bundle_is_one_bundle_error_and_changes_nothing(fake_meta, tmp_path, hub_home, mutate, words):
    assert invoke("expert", "add", str(make_bundle(tmp_path / "other", "prehistory", seed=9))).returncode == 0
    before_rows, before_store = list_json(), store_files(hub_home)
    bad = _valid_bundle(tmp_path)
    mutate(bad)
    assert_refused(invoke("expert", "add", str(bad)), *words)
    assert list_json() == before_rows and store_files(hub_home) == before_store


def test_nul_byte_in_a_bundle_path_is_a_bundle_error(fake_meta, tmp_path):
    from etr_hub.registry import Registry

    for path in (f"{tmp_path}/bun\x00dle", "\x00"):
        with pytest.raises(BundleError, match=r"NUL|null byte"):
            load_bundle(path)
        with pytest.raises(BundleError):
            Registry.open().add_expert(path)


# -- item 1: a bundle runs its own code --------------------------------------------------------------
def test_every_loader_call_passes_trust_remote_code_false():
    """transformers/peft ask on stdin whether to run a folder's code unless told; etr-hub always says no."""
    loaders = {"from_pretrained", "from_config"}
    calls = []
    for path in ETR_HUB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in loaders:
                target = ast.unparse(node.func.value)
                if target in {"cls", "super()"} or target.startswith("self"):
                    continue
                kw = {k.arg: k.value for k in node.keywords}
                calls.append((f"{path.relative_to(ETR_HUB)}:{node.lineno}", target, kw.get("trust_remote_code")))
    assert len(calls) >= 8
    missing = [where for where, _, value in calls if not (isinstance(value, ast.Constant) and value.value is False)]
    assert missing == [], f"loader calls without trust_remote_code=False: {missing}"


def test_a_providers_own_adapter_folder_is_refused_for_code_only(tmp_path):
    """Loaders check adapter folders too (a store file changed after `expert add`); a provider's
    training folder with pickles nobody loads and cache symlinks still loads."""
    from etr_hub.safety import code_in_folder

    folder = tmp_path / "astro-lora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    (folder / "training_args.bin").write_bytes(b"\x80\x04K\x01.")
    (tmp_path / "blob").write_bytes(b"weights")
    os.symlink(tmp_path / "blob", folder / "adapter_model.safetensors")  # a Hugging Face cache snapshot links to blobs
    os.symlink(tmp_path / "gone", folder / "stale-link")
    assert code_in_folder(folder) is None
    (folder / "tokenizer_config.json").write_text(AUTO_MAP)
    assert "has 'auto_map'" in code_in_folder(folder)
    (folder / "tokenizer_config.json").unlink()
    (folder / "modeling_evil.py").write_text("import os\n")
    assert code_in_folder(folder) == "'modeling_evil.py' is code"


def _plant_custom_tokenizer(adapter: Path, marker: Path) -> None:
    """What an attacker ships: a tokenizer whose class lives in evil.py (auto_map, no tokenizer_class)."""
    from tests.tiny_models import make_tokenizer

    make_tokenizer().save_pretrained(adapter)
    cfg = json.loads((adapter / "tokenizer_config.json").read_text())
    cfg.pop("tokenizer_class", None)
    cfg["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (adapter / "tokenizer_config.json").write_text(json.dumps(cfg))
    (adapter / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('evil.py ran')\n"
        "from transformers import PreTrainedTokenizerFast\n\nclass EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )


def test_custom_code_in_an_adapter_is_refused_and_never_runs_even_when_stdin_says_yes(registry, tmp_path):
    """The real console script, stdin answering "y": refused at `expert add`; and when the store's
    copy is changed afterwards (validation bypassed), the switch to the expert neither prompts nor
    runs evil.py — the meta model finishes the answer with a warning."""
    from etr_hub.models.refs import ModelRef
    from tests.runtime_support import QUESTION, add_expert, meta_and_winning_row
    from tests.tiny_models import make_tiny_lora

    marker = tmp_path / "MARKER"
    meta_path, meta_row, row = meta_and_winning_row(registry, tmp_path)
    adapter = make_tiny_lora(meta_path, tmp_path / "lora", seed=1)

    # 1) at validation: `etr-hub expert add` refuses the bundle
    add_expert(
        registry,
        "astro",
        row,
        ModelRef(kind="peft", path="adapter"),
        fingerprint=meta_row.fingerprint,
        hidden=32,
        adapter=adapter,
    )
    bundle = tmp_path / "evil-bundle"
    registry.export_expert("astro", bundle)
    _plant_custom_tokenizer(bundle / "adapter", marker)
    res = run_cli("expert", "add", str(bundle), "--replace", input="y\ny\n")
    assert_refused(res, "'adapter/evil.py' is code")
    assert not marker.exists()

    # 2) bypass validation: the same files planted into the store's copy of the registered adapter
    stored = registry.abspath(registry.get_expert("astro").adapter_path)
    _plant_custom_tokenizer(stored, marker)
    res = run_cli("chat", "--once", QUESTION[0]["content"], "--json", "--max-new-tokens", "6", input="y\ny\ny\n")
    assert res.returncode == 0, res.stderr
    assert not marker.exists(), "evil.py ran"
    assert "custom code" not in res.stdout + res.stderr and "[y/N]" not in res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["route"][0]["expert"] == "astro" and out["route"][0]["fell_back"] is True
    assert any("evil.py" in w for w in out["warnings"]), out["warnings"]

    # 3) and without the .py file, auto_map alone still never prompts nor loads code
    (stored / "evil.py").unlink()
    (bundle / "adapter" / "evil.py").unlink()
    assert_refused(
        run_cli("expert", "add", str(bundle), "--replace", input="y\n"),
        "'adapter/tokenizer_config.json' has 'auto_map'",
    )
    res = run_cli("chat", "--once", QUESTION[0]["content"], "--json", "--max-new-tokens", "6", input="y\n")
    assert res.returncode == 0 and "[y/N]" not in res.stdout + res.stderr and not marker.exists()
    assert json.loads(res.stdout)["route"][0]["fell_back"] is True


# -- item 5: JSON output never emits NaN ------------------------------------------------------------
def test_show_json_is_strict_json_even_for_a_nan_already_in_the_registry(fake_meta, registry, tmp_path):
    """A row written before the schema refused NaN (SQLite took it) prints as null, not NaN."""
    from etr_hub.registry.tables import Expert

    if registry.engine.dialect.name != "sqlite":
        pytest.skip("only SQLite stores NaN in a JSON column")
    assert invoke("expert", "add", str(make_bundle(tmp_path / "b", "astronomy"))).returncode == 0
    with registry.session(write=True) as s:
        row = s.get(Expert, registry.get_expert("astronomy").id)
        row.manifest = {
            **row.manifest,
            "query_set": {**row.manifest["query_set"], "tau": float("nan"), "purity": float("inf")},
        }
        row.tau = float("nan")

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))

    shown = strict(invoke("expert", "show", "astronomy", "--json").stdout)
    assert shown["query_set"]["tau"] is None and shown["query_set"]["purity"] is None
    [listed] = strict(invoke("expert", "list", "--json").stdout)
    assert listed["tau"] is None


# -- item 6: the largest bundle ---------------------------------------------------------------------
@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_bundle_over_the_size_limit_is_refused_before_anything_is_copied(
    fake_meta, tmp_path, hub_home, monkeypatch, how
):
    bundle = make_bundle(tmp_path / "big", "astronomy", adapter=True)
    (bundle / "adapter" / "extra.safetensors").write_bytes(b"\x00" * (3 << 20))
    args = ["expert", "add", str(bundle)]
    if how == "flag":
        args += ["--max-bundle-mb", "2"]
    else:
        monkeypatch.setenv("ETR_HUB_MAX_BUNDLE_MB", "2")
    assert_refused(invoke(*args), "larger than the limit of 2 MB", "--max-bundle-mb")
    assert store_files(hub_home) == [] and list_json() == []
    monkeypatch.setenv("ETR_HUB_MAX_BUNDLE_MB", "4")  # a raised limit lets it in
    assert invoke("expert", "add", str(bundle)).returncode == 0


@pytest.mark.parametrize(
    "args,words",
    [
        (["--max-bundle-mb", "0"], ["--max-bundle-mb must be a positive number"]),
        (["--max-bundle-mb", "nan"], ["--max-bundle-mb must be a positive number"]),
        (["--allow-env", "sk-live-123"], ["--allow-env 'sk-live-123' is not an environment variable name"]),
        (["--allow-env", "ETR_HUB_API_KEY"], ["ETR_HUB_* variables are the hub's own secrets"]),
    ],
)
def test_add_options_are_checked_before_anything_is_read(fake_meta, bundle_factory, hub_home, args, words):
    assert_refused(invoke("expert", "add", str(bundle_factory()), *args), *words)
    assert list_json() == [] and store_files(hub_home) == []

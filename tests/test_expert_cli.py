"""`etr-hub expert …` round trips and the bad-bundle table, through typer's CliRunner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from etr_hub.cli.main import app
from tests.helpers import FAKE_FP, write_manifest

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args))


def list_json() -> list[dict]:
    res = cli("expert", "list", "--json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def store_files(home: Path) -> list[str]:
    store = home / "store"
    return sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) if store.exists() else []


def test_add_list_show_export_roundtrip(fake_meta, bundle_factory, tmp_path, hub_home):
    src = bundle_factory("astronomy", adapter=True)
    res = cli("expert", "add", str(src))
    assert res.exit_code == 0, res.stderr
    assert "registered astronomy" in res.stderr and res.stdout == ""

    [row] = list_json()
    manifest = json.loads((src / "expert.json").read_text())
    assert row["name"] == "astronomy" and row["version"] == "0.1.0" and row["enabled"] is True
    assert row["meta_fingerprint"] == FAKE_FP and row["token_sha256"] == manifest["token"]["sha256"]

    shown = json.loads(cli("expert", "show", "astronomy", "--json").stdout)
    assert shown["token"] == manifest["token"] and shown["query_set"]["sha256"] == manifest["query_set"]["sha256"]

    human = cli("expert", "list")
    assert human.exit_code == 0 and "astronomy" in human.stdout and "0.1.0" in human.stdout

    # the registry keeps working after the source bundle is gone
    import shutil

    original_token = (src / "token.safetensors").read_bytes()
    shutil.rmtree(src)
    out = tmp_path / "exported"
    res = cli("expert", "export", "astronomy", str(out))
    assert res.exit_code == 0, res.stderr
    assert (out / "token.safetensors").read_bytes() == original_token
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "expert.json").read_text())["token"] == manifest["token"]
    # an exported bundle registers again (as a new version)
    m = json.loads((out / "expert.json").read_text())
    m["version"] = "0.2.0"
    write_manifest(out, m)
    assert cli("expert", "add", str(out)).exit_code == 0
    versions = {(r["version"], r["enabled"]) for r in list_json()}
    assert versions == {("0.1.0", False), ("0.2.0", True)}  # the newest version is the enabled one


def test_enable_disable_remove(fake_meta, bundle_factory, hub_home):
    for name in ("astronomy", "prehistory"):
        assert cli("expert", "add", str(bundle_factory(name))).exit_code == 0
    assert cli("expert", "disable", "astronomy").exit_code == 0
    assert {r["name"]: r["enabled"] for r in list_json()} == {"astronomy": False, "prehistory": True}
    assert cli("expert", "enable", "astronomy").exit_code == 0
    assert all(r["enabled"] for r in list_json())

    res = cli("expert", "remove", "astronomy")  # no --yes, no terminal: refuse
    assert res.exit_code != 0 and "--yes" in res.stderr
    before = store_files(hub_home)
    assert cli("expert", "remove", "astronomy", "--yes").exit_code == 0
    assert [r["name"] for r in list_json()] == ["prehistory"]
    assert len(store_files(hub_home)) < len(before)  # its unshared files left the store

    res = cli("expert", "show", "astronomy")
    assert res.exit_code != 0 and res.stderr.startswith("error: no expert named 'astronomy'")


def test_replace_and_duplicate(fake_meta, bundle_factory):
    a = bundle_factory("astronomy", seed=1)
    assert cli("expert", "add", str(a)).exit_code == 0
    b = bundle_factory("astronomy", seed=2)
    res = cli("expert", "add", str(b))
    assert res.exit_code != 0 and "already registered" in res.stderr and "--replace" in res.stderr
    assert cli("expert", "add", str(b), "--replace").exit_code == 0
    [row] = list_json()
    assert row["token_sha256"] == json.loads((b / "expert.json").read_text())["token"]["sha256"]


def test_add_without_meta_model(bundle_factory):
    res = cli("expert", "add", str(bundle_factory()))
    assert res.exit_code != 0 and "etr-hub init" in res.stderr


# -- every bad bundle the foundation issue lists: (id, mutation, expected message part) ---------
def _manifest(root):
    return json.loads((root / "expert.json").read_text())


def _edit(**changes):
    def mutate(root):
        m = _manifest(root)
        for dotted, value in changes.items():
            *path, last = dotted.split("__")
            node = m
            for p in path:
                node = node[p]
            if value is DELETE:
                del node[last]
            else:
                node[last] = value
        write_manifest(root, m)

    return mutate


DELETE = object()


def _token(values):
    def mutate(root):
        from safetensors.torch import save_file

        from etr_hub.store import sha256_file

        save_file({"expert_token": values()}, str(root / "token.safetensors"))
        m = _manifest(root)
        m["token"]["sha256"] = sha256_file(root / "token.safetensors")
        m["token"]["shape"] = list(values().shape)
        m["meta"]["hidden_size"] = values().shape[1]
        write_manifest(root, m)

    return mutate


def _nan_token():
    import torch

    t = torch.zeros(1, 16)
    t[0, 3] = float("nan")
    return t


def _wide_token():
    import torch

    return torch.ones(1, 24)


def _symlink_out(root):
    outside = root.parent / "outside.safetensors"
    (root / "token.safetensors").rename(outside)
    os.symlink(outside, root / "token.safetensors")


def _pickle_file(root):
    (root / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")


def _file(name, text):
    def mutate(root):
        (root / name).write_text(text)

    return mutate


def _remove(name):
    def mutate(root):
        (root / name).unlink()

    return mutate


BAD_BUNDLES = [
    ("missing-manifest", _remove("expert.json"), "expert.json is missing"),
    ("unparsable-manifest", _file("expert.json", "{not json"), "not valid JSON"),
    ("not-an-object", _file("expert.json", "[1, 2]"), "must hold a JSON object"),
    ("unknown-field", _edit(colour="blue"), "unknown field 'colour'"),
    ("missing-field", _edit(license=DELETE), "missing field 'license'"),
    ("missing-nested-field", _edit(token__sha256=DELETE), "missing field 'token.sha256'"),
    ("bad-name", _edit(name="Not A Slug!"), "field 'name'"),
    ("wrong-schema-version", _edit(schema_version=2), "unsupported schema_version 2"),
    ("token-sha-mismatch", _edit(token__sha256="b" * 64), "does not match the manifest"),
    ("token-shape-mismatch", _edit(token__shape=[1, 8]), "token shape (1, 16) disagrees"),
    ("token-dtype-mismatch", _edit(token__dtype="float16"), "token dtype float32 disagrees"),
    ("token-nan", _token(_nan_token), "NaN or Inf"),
    ("token-dim-vs-meta", _token(_wide_token), "token dimension 24, the meta model's hidden size is 16"),
    ("meta-fingerprint", _edit(meta__fingerprint="c" * 64), "registry's meta model is"),
    ("escape-dotdot", _edit(token__file="../token.safetensors"), "points outside the bundle"),
    ("escape-absolute", _edit(token__file="/etc/passwd"), "is an absolute path"),
    ("escape-symlink", _symlink_out, "symlink pointing outside the bundle"),
    ("pickle-file", _pickle_file, "pickle-based file"),
    ("trust-remote-code", _edit(trust_remote_code=True), "trust_remote_code"),
    (
        "trust-remote-code-nested",
        _edit(expert={"kind": "local", "path": "/m", "trust_remote_code": True}),
        "trust_remote_code",
    ),
    ("query-set-sha", _edit(query_set__sha256="d" * 64), "query set sha256 does not match"),
    ("query-set-missing", _remove("query_set.jsonl"), "query set 'query_set.jsonl' is missing"),
]


@pytest.mark.parametrize("mutate,message", [pytest.param(m, msg, id=i) for i, m, msg in BAD_BUNDLES])
def test_bad_bundle_is_refused_and_changes_nothing(fake_meta, bundle_factory, hub_home, mutate, message):
    assert cli("expert", "add", str(bundle_factory("prehistory", seed=9))).exit_code == 0
    before_rows, before_store = list_json(), store_files(hub_home)

    bad = bundle_factory("astronomy")
    mutate(bad)
    res = cli("expert", "add", str(bad))

    assert res.exit_code != 0
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert message in lines[0]
    assert " — " in lines[0]  # problem — fix
    assert "Traceback" not in res.stderr
    assert list_json() == before_rows and store_files(hub_home) == before_store


def test_duplicate_is_refused_and_changes_nothing(fake_meta, bundle_factory, hub_home):
    assert cli("expert", "add", str(bundle_factory("astronomy", seed=1))).exit_code == 0
    before_rows, before_store = list_json(), store_files(hub_home)
    res = cli("expert", "add", str(bundle_factory("astronomy", seed=2)))
    assert res.exit_code != 0 and "already registered" in res.stderr
    assert list_json() == before_rows and store_files(hub_home) == before_store


def test_debug_shows_traceback(fake_meta, bundle_factory, monkeypatch):
    monkeypatch.setenv("ETR_HUB_DEBUG", "1")
    bad = bundle_factory()
    (bad / "expert.json").write_text("{")
    res = cli("expert", "add", str(bad))
    assert res.exit_code != 0 and res.exception is not None  # raised, not swallowed


def test_adding_the_same_bundles_again_is_a_no_op(fake_meta, bundle_factory, hub_home):
    a, b = bundle_factory("astronomy", seed=1), bundle_factory("prehistory", seed=2)
    first = cli("expert", "add", str(a), str(b), "--json")
    assert first.exit_code == 0 and [r["name"] for r in json.loads(first.stdout)] == ["astronomy", "prehistory"]
    before_rows, before_store = list_json(), store_files(hub_home)
    again = cli("expert", "add", str(a), str(b))
    assert again.exit_code == 0 and again.stderr.count("already registered") == 2
    assert list_json() == before_rows and store_files(hub_home) == before_store
    # same name and version, other content: still refused
    assert cli("expert", "add", str(bundle_factory("astronomy", seed=3))).exit_code != 0

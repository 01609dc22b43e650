"""Bundles from the Hugging Face Hub (`expert add hf:ORG/REPO@COMMIT`), offline, from a Hugging Face cache.

huggingface_hub has no public API that writes a cache entry without a server, so `hf_cache_repo` writes
the cache layout it documents (models--ORG--REPO/{blobs,snapshots/<commit>,refs/main}, snapshot files
linked to blobs) and every test first proves huggingface_hub itself reads it: `snapshot_download(...,
local_files_only=True)` returns the snapshot and `scan_cache_dir` lists the revision with its files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import make_bundle, run_cli

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MISSING = "fedcba9876543210fedcba9876543210fedcba98"


def hf_cache_repo(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """Lay `folder` into `cache` as huggingface_hub lays out a downloaded model repository at `commit`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    for src in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / src.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    _prove_huggingface_hub_reads(cache, repo_id, commit, folder)
    return snapshot


def _prove_huggingface_hub_reads(cache: Path, repo_id: str, commit: str, folder: Path) -> None:
    from huggingface_hub import scan_cache_dir, snapshot_download

    got = Path(snapshot_download(repo_id, revision=commit, repo_type="model", local_files_only=True, cache_dir=cache))
    assert got == cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
    for src in (p for p in folder.rglob("*") if p.is_file()):
        assert (got / src.relative_to(folder)).read_bytes() == src.read_bytes()
    [repo] = [r for r in scan_cache_dir(cache).repos if r.repo_id == repo_id]
    [revision] = [r for r in repo.revisions if r.commit_hash == commit]
    assert {f.file_name for f in revision.files} == {p.name for p in folder.rglob("*") if p.is_file()}
    assert "main" in revision.refs


@pytest.fixture
def hf_env(tmp_path, monkeypatch, fake_meta) -> Path:
    """An offline Hugging Face cache (HF_HUB_CACHE) and a registry with a meta model."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ETR_HUB_ALLOW_DOWNLOAD", raising=False)
    return cache


def registry_state(home: Path) -> tuple[list, list]:
    res = run_cli("expert", "list", "--json")
    assert res.returncode == 0, res.stderr
    store = home / "store"
    files = sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) if store.exists() else []
    return json.loads(res.stdout), files


def test_add_from_the_hf_cache(hf_env, hub_home, tmp_path):
    bundle = make_bundle(tmp_path / "astro", "astronomy", adapter=True)
    hf_cache_repo(hf_env, "org/astro", bundle)

    res = run_cli("expert", "add", f"hf:org/astro@{COMMIT}")
    assert res.returncode == 0, res.stderr
    assert "registered astronomy" in res.stderr

    [row] = json.loads(run_cli("expert", "list", "--json").stdout)
    assert row["name"] == "astronomy" and row["source"] == f"hf:org/astro@{COMMIT}"
    manifest = json.loads((bundle / "expert.json").read_text())
    assert row["token_sha256"] == manifest["token"]["sha256"]
    human = run_cli("expert", "list")
    assert f"hf:org/astro@{COMMIT[:12]}" in human.stdout, human.stdout
    shown = run_cli("expert", "show", "astronomy")
    assert f"hf:org/astro@{COMMIT}" in shown.stdout, shown.stdout
    assert json.loads(run_cli("expert", "show", "astronomy", "--json").stdout)["source"] == f"hf:org/astro@{COMMIT}"

    # files come out of the store, not the cache: the expert outlives the cache, and exports byte-identical
    shutil.rmtree(hf_env)
    out = tmp_path / "exported"
    assert run_cli("expert", "export", "astronomy", str(out)).returncode == 0
    assert (out / "token.safetensors").read_bytes() == (bundle / "token.safetensors").read_bytes()
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == (
        bundle / "adapter" / "adapter_model.safetensors"
    ).read_bytes()


def test_adding_the_same_hf_bundle_again_is_a_no_op(hf_env, hub_home, tmp_path):
    hf_cache_repo(hf_env, "org/astro", make_bundle(tmp_path / "astro", "astronomy"))
    assert run_cli("expert", "add", f"hf:org/astro@{COMMIT}").returncode == 0
    before = registry_state(hub_home)
    again = run_cli("expert", "add", f"hf:org/astro@{COMMIT.upper()}")  # the same commit, however written
    assert again.returncode == 0 and "already registered" in again.stderr
    assert registry_state(hub_home) == before


def test_allow_download_while_hf_is_offline_reads_the_cache(hf_env, hub_home, tmp_path):
    hf_cache_repo(hf_env, "org/astro", make_bundle(tmp_path / "astro", "astronomy"))
    res = run_cli("expert", "add", f"hf:org/astro@{COMMIT}", env={"ETR_HUB_ALLOW_DOWNLOAD": "1"})
    assert res.returncode == 0, res.stderr
    missing = run_cli("expert", "add", f"hf:org/astro@{MISSING}", env={"ETR_HUB_ALLOW_DOWNLOAD": "1"})
    assert missing.returncode == 2 and "is not in the local Hugging Face cache" in missing.stderr, missing.stderr
    assert "HF_HUB_OFFLINE" in missing.stderr


def _bundle_with_code(root: Path) -> Path:
    make_bundle(root, "astronomy")
    (root / "modeling_astro.py").write_text("import os\n")
    return root


def _not_a_bundle(root: Path) -> Path:
    make_bundle(root, "astronomy")
    (root / "expert.json").rename(root / "manifest.json")
    return root


@pytest.mark.parametrize(
    ("ref", "make", "message"),
    [
        ("hf:org/astro", None, "has no revision — add it as hf:ORG/REPO@<commit sha>"),
        ("hf:org/astro@main", None, "revision 'main' of hf:org/astro is not a full commit hash"),
        ("hf:org/astro@0123abc", None, "is not a full commit hash — add it as hf:ORG/REPO@<commit sha>"),
        ("hf:not-a-repo@" + COMMIT, None, "is not a Hugging Face repo id"),
        (f"hf:org/astro@{MISSING}", None, "is not in the local Hugging Face cache"),
        (f"hf:org/astro@{COMMIT}", _not_a_bundle, "is not an etr-hub bundle (no expert.json"),
        (f"hf:org/astro@{COMMIT}", _bundle_with_code, "'modeling_astro.py' is code"),
    ],
)
def test_bad_hf_input_is_one_line_and_changes_nothing(hf_env, hub_home, tmp_path, ref, make, message):
    hf_cache_repo(hf_env, "org/astro", (make or make_bundle)(tmp_path / "repo"))  # a good bundle unless `make`
    if make is None and ref.endswith(MISSING):  # the repository is cached, at another commit
        assert (hf_env / "models--org--astro" / "snapshots" / COMMIT).is_dir()
    before = registry_state(hub_home)
    res = run_cli("expert", "add", ref)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert message in lines[0], lines[0]
    assert str(tmp_path) not in lines[0] or "cache" in lines[0]  # names the repository, not a temporary folder
    if ref.endswith(MISSING):
        assert "ETR_HUB_ALLOW_DOWNLOAD=1" in lines[0]
    assert registry_state(hub_home) == before == ([], [])


def test_export_writes_a_hub_model_card(registry, fake_meta, tmp_path):
    from huggingface_hub import ModelCard

    src = make_bundle(tmp_path / "astro", "astronomy")
    registry.add_expert(src)
    out = registry.export_expert("astronomy", tmp_path / "out").root
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0"  # the manifest's Apache-2.0, as the Hub names it
    assert {"etr-hub", "expert-token"} <= set(card.data.tags)
    assert card.text.strip() == "# astronomy"  # the provider's own card, kept under the front matter
    # exporting the export again changes nothing: the front matter is not added twice
    registry.add_expert(out, replace=True)
    again = registry.export_expert("astronomy", tmp_path / "again").root
    assert (again / "README.md").read_text() == (out / "README.md").read_text()


def test_export_card_keeps_a_providers_front_matter_and_adds_base_model(registry, fake_meta, tmp_path):
    from huggingface_hub import ModelCard

    src = make_bundle(tmp_path / "astro", "astronomy")
    manifest = json.loads((src / "expert.json").read_text())
    manifest["meta"]["reference"] = "embedded:smollm2-135m-instruct"
    manifest["license"] = "Custom Research Licence"
    del manifest["model_card"]
    (src / "expert.json").write_text(json.dumps(manifest))
    (src / "README.md").unlink()
    registry.add_expert(src)
    out = registry.export_expert("astronomy", tmp_path / "out").root
    data = ModelCard.load(out / "README.md").data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data.license == "other" and data.license_name == "custom-research-licence"
    assert "expert add hf:ORG/REPO@<commit sha>" in (out / "README.md").read_text()

    (out / "README.md").write_text("---\nlicense: mit\ntags:\n- astronomy\n---\n# Astro\n")
    manifest["model_card"] = "README.md"
    (out / "expert.json").write_text(json.dumps({**manifest, "version": "0.2.0"}))
    registry.add_expert(out)
    card = ModelCard.load(registry.export_expert("astronomy@0.2.0", tmp_path / "out2").root / "README.md")
    assert card.data.license == "mit" and card.data.tags == ["astronomy", "etr-hub", "expert-token"]
    assert card.text.strip() == "# Astro"


def test_an_exported_bundle_published_to_the_hub_is_added_back(hf_env, hub_home, registry, tmp_path):
    """The provider's path end to end: export, upload (here: the cache a download would leave), add."""
    registry.add_expert(make_bundle(tmp_path / "astro", "astronomy"))
    out = registry.export_expert("astronomy", tmp_path / "published").root
    registry.remove_expert("astronomy")
    hf_cache_repo(hf_env, "provider/astronomy-expert", out)
    res = run_cli("expert", "add", f"hf:provider/astronomy-expert@{COMMIT}")
    assert res.returncode == 0, res.stderr
    [row] = json.loads(run_cli("expert", "list", "--json").stdout)
    assert row["source"] == f"hf:provider/astronomy-expert@{COMMIT}"

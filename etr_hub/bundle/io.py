"""Read (and validate) or write a bundle directory. Reading never writes, executes or unpickles."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from etr_hub.bundle.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    TOKEN_TENSOR,
    Manifest,
    first_error,
)
from etr_hub.errors import BundleError, DataError
from etr_hub.jsonl import iter_jsonl
from etr_hub.store import sha256_file

if TYPE_CHECKING:
    import torch

# Formats that unpickle (and so can execute code) on load; a bundle carries safetensors only.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    @property
    def token_path(self) -> Path:
        return self.root / self.manifest.token.file

    @property
    def query_set_path(self) -> Path | None:
        qs = self.manifest.query_set
        return self.root / qs.file if qs and (self.root / qs.file).exists() else None

    @property
    def adapter_path(self) -> Path | None:
        ref = self.manifest.expert
        return self.root / ref.path if ref.kind == "peft" and ref.path else None

    @property
    def model_card_path(self) -> Path | None:
        return self.root / self.manifest.model_card if self.manifest.model_card else None


def _fail(bundle: Path, problem: str, fix: str) -> BundleError:
    return BundleError(f"bundle {bundle}: {problem}", fix)


def inside(root: Path, rel: str, what: str) -> Path:
    """Resolve a file reference from the manifest; refuse anything that leaves the bundle."""
    if os.path.isabs(rel) or rel.startswith("~"):
        raise _fail(root, f"{what} '{rel}' is an absolute path", "use a path relative to the bundle")
    if ".." in Path(rel).parts:
        raise _fail(root, f"{what} '{rel}' points outside the bundle", "keep every file inside the bundle folder")
    path = root / rel
    resolved = path.resolve()
    if resolved != root.resolve() and root.resolve() not in resolved.parents:
        raise _fail(root, f"{what} '{rel}' is a symlink pointing outside the bundle", "copy the file into the bundle instead of linking it")
    return path


def _find_truthy_key(obj: Any, key: str) -> bool:
    if isinstance(obj, dict):
        return any((k == key and bool(v)) or _find_truthy_key(v, key) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_find_truthy_key(v, key) for v in obj)
    return False


def parse_manifest(root: Path, raw_text: str) -> Manifest:
    try:
        raw = json.loads(raw_text)
    except json.JSONDecodeError as e:
        raise _fail(root, f"{MANIFEST_NAME} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})", "fix the JSON syntax") from None
    if not isinstance(raw, dict):
        raise _fail(root, f"{MANIFEST_NAME} must hold a JSON object", "write the manifest as {...}")
    if _find_truthy_key(raw, "trust_remote_code"):
        raise _fail(root, "the manifest asks for trust_remote_code", "etr-hub never runs code from a bundle; remove it and ship a standard architecture")
    if "schema_version" in raw and raw["schema_version"] != SCHEMA_VERSION:
        raise _fail(root, f"unsupported schema_version {raw['schema_version']!r} (this etr-hub reads {SCHEMA_VERSION})", "rebuild the bundle with a matching etr-hub, or upgrade etr-hub")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        problem, fix = first_error(e)
        raise _fail(root, f"{MANIFEST_NAME}: {problem}", fix) from None


def _refuse_pickles(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in PICKLE_SUFFIXES:
            raise _fail(root, f"'{p.relative_to(root)}' is a pickle-based file", "bundles carry safetensors only; convert it with safetensors.torch.save_file")
        if p.is_symlink():
            inside(root, p.relative_to(root).as_posix(), "file")


def read_token(root: Path, path: Path, manifest: Manifest) -> "torch.Tensor":
    """Load and check the expert-token row against the manifest; returns a (1, d) tensor."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tok = manifest.token
    if not path.is_file():
        raise _fail(root, f"token file '{tok.file}' is missing", "put the token.safetensors written by `etr-hub train-token` in the bundle")
    if sha256_file(path) != tok.sha256:
        raise _fail(root, f"token file sha256 {sha256_file(path)[:12]}… does not match the manifest's {tok.sha256[:12]}…", "re-export the bundle so the manifest matches the token file")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise _fail(root, f"token file is not a readable safetensors file ({e})", "write it with safetensors.torch.save_file") from None
    if list(tensors) != [TOKEN_TENSOR]:
        raise _fail(root, f"token file holds {sorted(tensors)}, expected one tensor '{TOKEN_TENSOR}'", "save the row under the name 'expert_token'")
    row = tensors[TOKEN_TENSOR]
    dtype = str(row.dtype).removeprefix("torch.")
    if tuple(row.shape) != tuple(tok.shape) or row.ndim != 2 or row.shape[0] != 1:
        raise _fail(root, f"token shape {tuple(row.shape)} disagrees with the manifest's {tuple(tok.shape)} (expected (1, d))", "re-export the bundle so the manifest matches the token file")
    if dtype != tok.dtype:
        raise _fail(root, f"token dtype {dtype} disagrees with the manifest's {tok.dtype}", "re-export the bundle so the manifest matches the token file")
    if row.shape[1] != manifest.meta.hidden_size:
        raise _fail(root, f"token dimension {row.shape[1]} differs from the meta model's hidden size {manifest.meta.hidden_size}", "retrain the token against this meta model")
    if not bool(row.float().isfinite().all()):
        raise _fail(root, "the token row contains NaN or Inf", "retrain the token; training diverged")
    return row


def _check_query_set(root: Path, manifest: Manifest) -> None:
    qs = manifest.query_set
    if qs is None:
        return
    path = inside(root, qs.file, "query set")
    if not path.is_file():
        raise _fail(root, f"query set '{qs.file}' is missing", "add the query_set.jsonl or drop 'query_set.file' from the manifest")
    if sha256_file(path) != qs.sha256:
        raise _fail(root, "query set sha256 does not match the manifest", "re-export the bundle so the manifest matches the query set")
    n = 0
    try:
        for lineno, row in iter_jsonl(path, f"query set {qs.file}"):
            if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not row["query"].strip():
                raise _fail(root, f"query set line {lineno} has no non-empty 'query'", "every line needs a 'query' string")
            n += 1
    except DataError as exc:  # not UTF-8, not JSON, too deep: named by line
        raise _fail(root, exc.problem, exc.fix) from None
    if n != qs.size:
        raise _fail(root, f"query set has {n} rows but the manifest says {qs.size}", "re-export the bundle")


def _check_adapter(root: Path, manifest: Manifest) -> None:
    ref = manifest.expert
    if ref.kind != "peft" or ref.path is None:
        return
    path = inside(root, ref.path, "adapter")
    if not (path / "adapter_config.json").is_file() or not (path / "adapter_model.safetensors").is_file():
        raise _fail(root, f"adapter '{ref.path}' lacks adapter_config.json or adapter_model.safetensors", "save the adapter with peft's save_pretrained(safe_serialization=True)")
    cfg = json.loads((path / "adapter_config.json").read_text())
    if _find_truthy_key(cfg, "trust_remote_code"):
        raise _fail(root, "the adapter config asks for trust_remote_code", "remove it; etr-hub never runs code from a bundle")


def load_bundle(path: str | Path) -> Bundle:
    """Validate a bundle directory completely (manifest, token, query set, adapter)."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a directory", "pass the folder that holds expert.json")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise _fail(root, f"{MANIFEST_NAME} is missing", "run `etr-hub train-token` to write a bundle, or add the manifest")
    inside(root, MANIFEST_NAME, "manifest")
    manifest = parse_manifest(root, manifest_path.read_text(encoding="utf-8", errors="replace"))
    _refuse_pickles(root)
    for rel, what in [(manifest.token.file, "token file"), (manifest.model_card, "model card")]:
        if rel is not None:
            inside(root, rel, what)
    read_token(root, root / manifest.token.file, manifest)
    _check_query_set(root, manifest)
    _check_adapter(root, manifest)
    return Bundle(root=root, manifest=manifest)


def write_bundle(
    out: Path,
    manifest: Manifest,
    files: dict[str, Path],
    *,
    replace: bool = False,
) -> Bundle:
    """Write a bundle atomically: build it in a temp dir beside `out`, then rename into place.

    `files` maps bundle-relative names (e.g. "token.safetensors", "adapter") to sources.
    """
    out = Path(out)
    if out.exists() and not replace:
        raise BundleError(f"{out} already exists", "pass --replace or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        for rel, src in files.items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dest)
            else:
                shutil.copyfile(src, dest)
        (tmp / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n")
        load_bundle(tmp)  # never hand out a bundle we would refuse ourselves
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Bundle(root=out, manifest=manifest)


def save_token(path: Path, row: "torch.Tensor") -> None:
    """Write a (1, d) expert-token row as safetensors."""
    from safetensors.torch import save_file

    assert row.ndim == 2 and row.shape[0] == 1 and math.prod(row.shape) > 0
    save_file({TOKEN_TENSOR: row.detach().contiguous().cpu()}, str(path))

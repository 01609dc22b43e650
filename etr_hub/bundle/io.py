"""Read (and validate) or write a bundle directory. Reading never writes, executes or unpickles."""

from __future__ import annotations

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
    TokenInfo,
    first_error,
)
from etr_hub.errors import BundleError, DataError
from etr_hub.jsonl import iter_jsonl
from etr_hub.safety import (
    PICKLE_SUFFIXES,
    Refused,
    check_json_file,
    check_json_tree,
    max_bundle_bytes,
    parse_json,
    read_json_file,
    scan,
    walk,
)
from etr_hub.store import sha256_file

if TYPE_CHECKING:
    import torch

__all__ = [
    "PICKLE_SUFFIXES",
    "Bundle",
    "inside",
    "load_bundle",
    "parse_manifest",
    "read_token",
    "save_token",
    "write_bundle",
    "write_token_bundle",
]


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
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        raise _fail(
            root, f"{what} '{rel}' cannot be resolved ({e})", "replace links with the files themselves"
        ) from None
    if resolved != root.resolve() and root.resolve() not in resolved.parents:
        raise _fail(
            root,
            f"{what} '{rel}' is a symlink pointing outside the bundle",
            "copy the file into the bundle instead of linking it",
        )
    return path


def _find_truthy_key(obj: Any, key: str) -> bool:
    return any(k == key and bool(v) for k, v in walk(obj))


def _refused(root: Path, r: Refused) -> BundleError:
    return _fail(root, r.problem, r.fix)


def parse_manifest(root: Path, raw_text: str | bytes) -> Manifest:
    try:
        raw = parse_json(raw_text, MANIFEST_NAME)
    except Refused as r:
        raise _refused(root, r) from None
    return manifest_from_json(root, raw)


def manifest_from_json(root: Path, raw: Any) -> Manifest:
    if not isinstance(raw, dict):
        raise _fail(root, f"{MANIFEST_NAME} must hold a JSON object", "write the manifest as {...}")
    if _find_truthy_key(raw, "trust_remote_code"):
        raise _fail(
            root,
            "the manifest asks for trust_remote_code",
            "etr-hub never runs code from a bundle; remove it and ship a standard architecture",
        )
    if "schema_version" in raw and raw["schema_version"] != SCHEMA_VERSION:
        raise _fail(
            root,
            f"unsupported schema_version {raw['schema_version']!r} (this etr-hub reads {SCHEMA_VERSION})",
            "rebuild the bundle with a matching etr-hub, or upgrade etr-hub",
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        problem, fix = first_error(e)
        raise _fail(root, f"{MANIFEST_NAME}: {problem}", fix) from None
    except RecursionError:
        raise _fail(
            root, f"{MANIFEST_NAME} nests JSON too deeply", "write the manifest as `etr-hub train-token` does"
        ) from None
    try:
        check_json_tree(raw, MANIFEST_NAME)
    except Refused as r:
        raise _refused(root, r) from None
    return manifest


def _check_recorded(root: Path, path: Path, rel: str, sha256: str, what: str, missing_fix: str) -> None:
    """The file the manifest names as `rel` is there, with the sha256 the manifest records."""
    if not path.is_file():
        raise _fail(root, f"{what} '{rel}' is missing", missing_fix)
    actual = sha256_file(path)
    if actual != sha256:
        raise _fail(
            root,
            f"{what} sha256 does not match the manifest ({actual[:12]}…, the manifest says {sha256[:12]}…)",
            f"re-export the bundle so the manifest matches the {what}",
        )


def read_token(root: Path, path: Path, manifest: Manifest) -> torch.Tensor:
    """Load and check the expert-token row against the manifest; returns a (1, d) tensor."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tok = manifest.token
    _check_recorded(
        root,
        path,
        tok.file,
        tok.sha256,
        "token file",
        "put the token.safetensors written by `etr-hub train-token` in the bundle",
    )
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise _fail(
            root, f"token file is not a readable safetensors file ({e})", "write it with safetensors.torch.save_file"
        ) from None
    if list(tensors) != [TOKEN_TENSOR]:
        raise _fail(
            root,
            f"token file holds {sorted(tensors)}, expected one tensor '{TOKEN_TENSOR}'",
            "save the row under the name 'expert_token'",
        )
    row = tensors[TOKEN_TENSOR]
    dtype = str(row.dtype).removeprefix("torch.")
    if tuple(row.shape) != tuple(tok.shape) or row.ndim != 2 or row.shape[0] != 1:
        raise _fail(
            root,
            f"token shape {tuple(row.shape)} disagrees with the manifest's {tuple(tok.shape)} (expected (1, d))",
            "re-export the bundle so the manifest matches the token file",
        )
    if dtype != tok.dtype:
        raise _fail(
            root,
            f"token dtype {dtype} disagrees with the manifest's {tok.dtype}",
            "re-export the bundle so the manifest matches the token file",
        )
    if row.shape[1] != manifest.meta.hidden_size:
        raise _fail(
            root,
            f"token dimension {row.shape[1]} differs from the meta model's hidden size {manifest.meta.hidden_size}",
            "retrain the token against this meta model",
        )
    if not bool(row.float().isfinite().all()):
        raise _fail(root, "the token row contains NaN or Inf", "retrain the token; training diverged")
    return row


NORM_FIX = (
    "retrain the token with `etr-hub train-token` (a trained row stays near the size of the meta model's own rows)"
)


def token_norm_problem(row: torch.Tensor, max_norm: float) -> str | None:
    """Why an expert row is too large for a meta model whose largest W_V row norm is `max_norm`."""
    from etr_hub.routing.math import MAX_ROW_NORM_RATIO, row_norm_ratio

    ratio = row_norm_ratio(row, max_norm)
    if ratio <= MAX_ROW_NORM_RATIO:
        return None
    norm = float(row.double().norm())
    return (
        f"token row norm {norm:.3g} is {ratio:.3g}× the meta model's largest output row ({max_norm:.3g}); "
        f"the limit is {MAX_ROW_NORM_RATIO:g}×, beyond which one token takes every prompt"
    )


def _check_query_set(root: Path, manifest: Manifest) -> None:
    qs = manifest.query_set
    if qs is None:
        return
    path = inside(root, qs.file, "query set")
    _check_recorded(root, path, qs.file, qs.sha256, "query set", "add it, or drop 'query_set' from the manifest")
    n = 0
    try:
        for lineno, row in iter_jsonl(path, f"query set {qs.file}"):
            if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not row["query"].strip():
                raise _fail(
                    root, f"query set line {lineno} has no non-empty 'query'", "every line needs a 'query' string"
                )
            n += 1
    except DataError as exc:  # not UTF-8, not JSON, too deep: named by line
        raise _fail(root, exc.problem, exc.fix or "") from None
    if n != qs.size:
        raise _fail(root, f"query set has {n} rows but the manifest says {qs.size}", "re-export the bundle")


def _check_adapter(root: Path, manifest: Manifest) -> None:
    ref = manifest.expert
    if ref.kind != "peft" or ref.path is None:
        return
    path = inside(root, ref.path, "adapter")
    if not (path / "adapter_config.json").is_file() or not (path / "adapter_model.safetensors").is_file():
        raise _fail(
            root,
            f"adapter '{ref.path}' lacks adapter_config.json or adapter_model.safetensors",
            "save the adapter with peft's save_pretrained(safe_serialization=True)",
        )
    rel = f"{ref.path.rstrip('/')}/adapter_config.json"
    try:
        cfg = read_json_file(path / "adapter_config.json", rel)
    except Refused as r:
        raise _refused(root, r) from None
    if not isinstance(cfg, dict):
        raise _fail(root, f"'{rel}' must hold a JSON object", "save the adapter with peft's save_pretrained")
    if _find_truthy_key(cfg, "trust_remote_code"):
        raise _fail(
            root, "the adapter config asks for trust_remote_code", "remove it; etr-hub never runs code from a bundle"
        )


def load_bundle(path: str | Path, *, max_bundle_mb: float | None = None) -> Bundle:
    """Validate a bundle directory completely (limits, files, manifest, token, query set, adapter).

    Nothing is executed, unpickled or copied; every file is checked before any is read."""
    root = Path(path)
    if "\x00" in str(root):
        raise BundleError(f"bundle path {str(root)!r} contains a NUL byte", "pass the folder that holds expert.json")
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a directory", "pass the folder that holds expert.json")
    try:
        entries = scan(root, max_bytes=max_bundle_bytes(max_bundle_mb))
        if MANIFEST_NAME not in {e.rel for e in entries}:
            raise _fail(
                root, f"{MANIFEST_NAME} is missing", "run `etr-hub train-token` to write a bundle, or add the manifest"
            )
        raw_manifest = read_json_file(root / MANIFEST_NAME, MANIFEST_NAME)
        for e in entries:  # tokenizer/adapter configs: no auto_map, no trust_remote_code, plain data
            if e.rel.endswith(".json") and e.rel != MANIFEST_NAME:
                check_json_file(e.path, e.rel)
    except Refused as r:
        raise _refused(root, r) from None
    inside(root, MANIFEST_NAME, "manifest")
    manifest = manifest_from_json(root, raw_manifest)
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
        raise BundleError(f"{out} already exists", "pass `replace=True` or choose another `out`")
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


def save_token(path: Path, row: torch.Tensor) -> None:
    """Write a (1, d) expert-token row as safetensors."""
    from safetensors.torch import save_file

    assert row.ndim == 2 and row.shape[0] == 1 and math.prod(row.shape) > 0
    save_file({TOKEN_TENSOR: row.detach().contiguous().cpu()}, str(path))


def write_token_bundle(
    out: Path, row: torch.Tensor, *, files: dict[str, Path] | None = None, replace: bool = False, **manifest: Any
) -> Bundle:
    """Write a bundle whose expert token is `row` ((1, d) or (d,), stored as float32), atomically.

    The token file is saved and its sha256 and shape go into the manifest, which is built from
    the other `manifest` fields (name, license, provider, expert, meta, …); `files` adds the
    bundle's other files by bundle-relative name (e.g. "adapter", "query_set.jsonl")."""
    row = row.detach().float().reshape(1, -1)
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "token.safetensors"
        save_token(token, row)
        info = TokenInfo(sha256=sha256_file(token), shape=(1, row.shape[1]), dtype="float32")
        bundle = Manifest(**manifest, token=info)
        return write_bundle(out, bundle, {**(files or {}), "token.safetensors": token}, replace=replace)

"""Bundles from the Hugging Face Hub: `hf:ORG/REPO@COMMIT`.

huggingface_hub resolves the pinned commit to a snapshot of its cache (downloading only with
ETR_HUB_ALLOW_DOWNLOAD=1, and only the files a bundle may hold: never code); the snapshot's files
(links into the cache's blobs) are copied into a temporary folder and validated exactly like a
local bundle (`load_bundle`). The caller registers it while the context is open.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from etr_hub.bundle.io import Bundle, load_bundle
from etr_hub.bundle.manifest import MANIFEST_NAME
from etr_hub.config import settings
from etr_hub.errors import BundleError, ModelLoadError
from etr_hub.models.refs import ModelRef
from etr_hub.safety import MAX_FILES, Refused, check_name, max_bundle_bytes

HF_PREFIX = "hf:"
# What a bundle may hold (manifest, token, query set, adapter, tokenizer files, model card): the only files fetched.
BUNDLE_PATTERNS = ["*.json", "*.jsonl", "*.safetensors", "*.md", "*.txt", "*.jinja", "*.model", "*.tiktoken"]
PIN_FIX = "add it as hf:ORG/REPO@<commit sha> (the full 40-character commit hash: a branch or tag is not pinned)"


def is_hf_bundle(source: object) -> bool:
    """True for an `hf:` bundle reference (a string; a Path is always a local folder)."""
    return isinstance(source, str) and source.startswith(HF_PREFIX)


def parse_hf_bundle(text: str) -> ModelRef:
    """`hf:ORG/REPO@COMMIT` parsed as a model reference is (the same rules); BundleError otherwise."""
    try:
        ref = ModelRef.parse(text)
    except ModelLoadError as e:
        raise BundleError(e.problem, PIN_FIX) from None
    if ref.kind != "hf":
        raise BundleError(f"bundle {text} is not an hf: reference", PIN_FIX)
    return ref


@contextmanager
def fetched_bundle(text: str, *, max_bundle_mb: float | None = None) -> Iterator[tuple[Bundle, str]]:
    """(the validated bundle in a temporary folder, its source `hf:ORG/REPO@COMMIT`); removed on exit."""
    ref = parse_hf_bundle(text)
    source = f"{HF_PREFIX}{ref.repo_id}@{ref.revision}"
    snapshot = _snapshot(ref, source)
    if not (snapshot / MANIFEST_NAME).is_file():
        raise BundleError(
            f"{source} is not an etr-hub bundle (no {MANIFEST_NAME} at the repository's top level)",
            "add a repository uploaded from an exported bundle (`etr-hub expert export NAME DIR`, then `hf upload`)",
        )
    with tempfile.TemporaryDirectory(prefix="etr-hub-hf-") as tmp:
        root = Path(tmp) / "bundle"
        _copy_snapshot(snapshot, root, source, max_bundle_bytes(max_bundle_mb))
        try:
            bundle = load_bundle(root, max_bundle_mb=max_bundle_mb)
        except BundleError as e:  # name the repository, not the temporary folder
            raise BundleError(e.problem.replace(str(root), source), e.fix) from None
        yield bundle, source


def _snapshot(ref: ModelRef, source: str) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    online = settings().allow_download
    try:
        if online and not constants.HF_HUB_OFFLINE:  # HF_HUB_OFFLINE=1: huggingface_hub reads its cache only
            _refuse_code_upstream(ref, source)
        folder = snapshot_download(
            ref.repo_id or "",
            revision=ref.revision,
            repo_type="model",
            allow_patterns=BUNDLE_PATTERNS,
            local_files_only=not online,
        )
    except LocalEntryNotFoundError:
        how = "check HF_HUB_OFFLINE / the network" if online else "set ETR_HUB_ALLOW_DOWNLOAD=1 to download it"
        raise BundleError(
            f"{source} is not in the local Hugging Face cache ({_cache_dir()})",
            f"{how} (bundle files only: JSON, safetensors, model card), or point HF_HUB_CACHE at a cache that holds it",
        ) from None
    except BundleError:
        raise
    except Exception as e:  # huggingface_hub's errors, OSError, its HTTP client's: the operator needs one line
        reason = " ".join(str(e).split())[:300]
        raise BundleError(f"could not fetch {source}: {reason}", "check the repository name and commit") from None
    return Path(folder)


def _refuse_code_upstream(ref: ModelRef, source: str) -> None:
    """Before downloading: refuse a repository that holds code or pickles (none of it would be fetched)."""
    from huggingface_hub import HfApi

    for rel in HfApi().list_repo_files(ref.repo_id or "", revision=ref.revision, repo_type="model"):
        try:
            check_name(rel)
        except Refused as r:
            raise BundleError(f"{source}: {r.problem}", r.fix) from None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _copy_snapshot(snapshot: Path, dest: Path, source: str, max_bytes: int) -> None:
    """Copy a cache snapshot (links into the repository's blobs/) to `dest` as plain files, within the limits."""
    blobs = (snapshot.parent.parent / "blobs").resolve()
    files: list[tuple[Path, str]] = []
    total = 0
    for folder, dirs, names in os.walk(snapshot):  # never follows a linked folder
        for name in sorted(dirs):
            if os.path.islink(os.path.join(folder, name)):
                raise _refused(source, f"'{_rel(snapshot, folder, name)}' is a symlinked folder")
        for name in sorted(names):
            path, rel = Path(folder, name), _rel(snapshot, folder, name)
            if path.is_symlink() and path.resolve().parent != blobs:
                raise _refused(source, f"'{rel}' links outside the repository's blobs in the Hugging Face cache")
            try:
                info = path.stat()
            except OSError as e:
                raise _refused(source, f"'{rel}' cannot be read ({e.strerror})") from None
            if not stat.S_ISREG(info.st_mode):
                raise _refused(source, f"'{rel}' is not a regular file")
            total += info.st_size
            files.append((path, rel))
            if total > max_bytes or len(files) > MAX_FILES:
                raise BundleError(
                    f"{source} is larger than the limit of {max_bytes / 2**20:g} MB or {MAX_FILES} files",
                    "raise the limit with `max_bundle_mb` / ETR_HUB_MAX_BUNDLE_MB if you trust it",
                )
    for path, rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def _rel(snapshot: Path, folder: str, name: str) -> str:
    return Path(folder, name).relative_to(snapshot).as_posix()


def _refused(source: str, problem: str) -> BundleError:
    return BundleError(f"{source}: {problem}", "the cache was changed by hand: delete it and fetch the bundle again")

"""Content-addressed file store under `$ETR_HUB_HOME/store`.

A registered expert keeps working after its source bundle is deleted, so `expert add` copies
the token file, the query set and any adapter here, addressed by sha256. Every write goes to
a temporary name first and is renamed into place, so a killed process never leaves a
half-written file under a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_listing(root: Path) -> dict[str, str]:
    """{relative posix path: sha256} of every regular file below `root`."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def tree_sha256(listing: dict[str, str]) -> str:
    """One hash for a directory: sha256 of its canonical listing."""
    return sha256_bytes(json.dumps(listing, sort_keys=True, separators=(",", ":")).encode())


class Store:
    def __init__(self, root: Path):
        self.root = root

    # -- single files -------------------------------------------------------------------
    def file_path(self, sha256: str, suffix: str = "") -> Path:
        return self.root / "sha256" / sha256[:2] / f"{sha256}{suffix}"

    def put_file(self, src: Path, sha256: str | None = None, suffix: str = "") -> tuple[str, Path]:
        """Copy `src` in (idempotent); returns (sha256, stored path)."""
        digest = sha256 or sha256_file(src)
        dest = self.file_path(digest, suffix)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                if sha256_file(Path(tmp)) != digest:  # source changed under us
                    raise OSError(f"{src} changed while it was being copied")
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return digest, dest

    def put_bytes(self, data: bytes, suffix: str = "") -> tuple[str, Path]:
        digest = sha256_bytes(data)
        dest = self.file_path(digest, suffix)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dest, data)
        return digest, dest

    # -- directories (PEFT adapters) ----------------------------------------------------
    def tree_path(self, sha256: str) -> Path:
        return self.root / "trees" / sha256

    def put_tree(self, src: Path) -> tuple[str, Path]:
        listing = tree_listing(src)
        digest = tree_sha256(listing)
        dest = self.tree_path(digest)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-"))
            try:
                for rel in listing:
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / rel, tmp / rel)
                if tree_sha256(tree_listing(tmp)) != digest:
                    raise OSError(f"{src} changed while it was being copied")
                os.replace(tmp, dest)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return digest, dest

    def discard(self, path: Path) -> None:
        """Remove a stored file or tree that nothing references any more."""
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(dest: Path, text: str) -> None:
    atomic_write_bytes(dest, text.encode())

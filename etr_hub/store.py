"""Content-addressed file store under `$ETR_HUB_HOME/store`.

A registered expert keeps working after its source bundle is deleted, so `expert add` copies
the token file, the query set and any adapter here, addressed by sha256. Every write goes to
a temporary name first and is renamed into place, so a killed process never leaves a
half-written file under a final name. Each temporary has a lock file its writer holds (flock)
until it is renamed; opening the store removes temporaries whose writer is gone (the kernel
dropped the lock), so a kill -9 mid-copy leaks nothing and a concurrent add is never broken.
`gc` deletes what no registry row references, under an exclusive store lock that `expert add`
holds shared from its first copy to its commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: temporaries are only swept after the grace period
    fcntl = None  # type: ignore[assignment]

CHUNK = 1 << 20
TMP = ".tmp-"
LOCK = ".lock"
GRACE_S = 3600  # a temporary without a lock file (older etr-hub, other OS) is kept this long


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
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def tree_sha256(listing: dict[str, str]) -> str:
    """One hash for a directory: sha256 of its canonical listing."""
    return sha256_bytes(json.dumps(listing, sort_keys=True, separators=(",", ":")).encode())


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)  # store-relative paths no registry row referenced
    temporaries: list[str] = field(default_factory=list)  # abandoned temporaries of killed writes
    bytes: int = 0
    dry_run: bool = False

    def to_json(self) -> dict:
        return {"removed": self.removed, "temporaries": self.temporaries, "bytes": self.bytes, "dry_run": self.dry_run}


class Store:
    def __init__(self, root: Path, *, sweep: bool = True):
        self.root = root
        self.swept: list[str] = []  # temporaries removed when this store was opened
        if sweep:
            self.swept = self.sweep()

    # -- temporaries and locks ------------------------------------------------------------
    @contextmanager
    def lock(self, *, exclusive: bool) -> Iterator[None]:
        """The store-wide lock: shared while files are added and recorded, exclusive for gc."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextmanager
    def _temp(self, parent: Path, *, directory: bool) -> Iterator[Path]:
        """A temporary file or folder in `parent`, locked by this process until the block ends."""
        parent.mkdir(parents=True, exist_ok=True)
        fd, lock = tempfile.mkstemp(dir=parent, prefix=TMP, suffix=LOCK)
        tmp = Path(lock[: -len(LOCK)])
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            if directory:
                tmp.mkdir()
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            yield tmp
        finally:
            _remove(tmp)
            _remove(Path(lock))
            os.close(fd)

    def sweep(self, *, dry_run: bool = False) -> list[str]:
        """Remove temporaries whose writer is gone; returns their store-relative paths."""
        found = []
        try:
            parents = [self.root / "trees", *sorted((self.root / "sha256").glob("??"))]
            for parent in parents:
                if not parent.is_dir():
                    continue
                for entry in sorted(parent.iterdir()):
                    if not entry.name.startswith(TMP):
                        continue
                    if not entry.name.endswith(LOCK) and _abandoned(entry):
                        found.append(entry.relative_to(self.root).as_posix())
                        if not dry_run:
                            _remove(entry)
                            _remove(entry.with_name(entry.name + LOCK))
                    elif entry.name.endswith(LOCK) and _orphan_lock(entry) and not dry_run:
                        _remove(entry)
        except OSError:  # a read-only or vanished store: nothing to sweep here
            pass
        return found

    def gc(self, live: set[str], *, dry_run: bool = False) -> GcReport:
        """Delete stored files and trees not in `live` (store-relative paths), and abandoned
        temporaries. Call under `lock(exclusive=True)`, with `live` read under it."""
        report = GcReport(temporaries=self.swept + self.sweep(dry_run=dry_run), dry_run=dry_run)
        self.swept = []
        candidates = (
            sorted(p for p in (self.root / "sha256").glob("??/*") if p.is_file())
            if (self.root / "sha256").is_dir()
            else []
        )
        candidates += (
            sorted(p for p in (self.root / "trees").iterdir() if p.is_dir()) if (self.root / "trees").is_dir() else []
        )
        for path in candidates:
            rel = path.relative_to(self.root).as_posix()
            if path.name.startswith(TMP) or rel in live:
                continue
            report.removed.append(rel)
            report.bytes += _size(path)
            if not dry_run:
                self.discard(path)
                if path.parent.parent.name == "sha256":
                    with suppress(
                        OSError
                    ):  # only an emptied shard folder goes (writers hold the shared lock: none now)
                        path.parent.rmdir()
        return report

    # -- single files -------------------------------------------------------------------
    def file_path(self, sha256: str, suffix: str = "") -> Path:
        return self.root / "sha256" / sha256[:2] / f"{sha256}{suffix}"

    def put_file(self, src: Path, sha256: str | None = None, suffix: str = "") -> tuple[str, Path]:
        """Copy `src` in (idempotent); returns (sha256, stored path)."""
        digest = sha256 or sha256_file(src)
        dest = self.file_path(digest, suffix)
        if not dest.exists():
            with self._temp(dest.parent, directory=False) as tmp:
                shutil.copyfile(src, tmp)
                if sha256_file(tmp) != digest:  # source changed under us
                    raise OSError(f"{src} changed while it was being copied")
                os.replace(tmp, dest)
        return digest, dest

    # -- directories (PEFT adapters) ----------------------------------------------------
    def tree_path(self, sha256: str) -> Path:
        return self.root / "trees" / sha256

    def put_tree(self, src: Path) -> tuple[str, Path]:
        listing = tree_listing(src)
        digest = tree_sha256(listing)
        dest = self.tree_path(digest)
        if not dest.exists():
            with self._temp(dest.parent, directory=True) as tmp:
                for rel in listing:
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / rel, tmp / rel)
                if tree_sha256(tree_listing(tmp)) != digest:
                    raise OSError(f"{src} changed while it was being copied")
                os.replace(tmp, dest)
        return digest, dest

    def discard(self, path: Path) -> None:
        """Remove a stored file or tree that nothing references any more."""
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def _abandoned(tmp: Path) -> bool:
    lock = tmp.with_name(tmp.name + LOCK)
    if lock.exists() and fcntl is not None:
        return _unlocked(lock)
    return _older_than(tmp, GRACE_S)  # no lock to ask: wait until no write could still be running


def _unlocked(lock: Path) -> bool:
    """True when no process holds `lock` (its writer finished or died)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > seconds
    except OSError:
        return False


def _orphan_lock(lock: Path) -> bool:
    """A lock whose temporary is gone, old and held by no one."""
    return not lock.with_name(lock.name[: -len(LOCK)]).exists() and _older_than(lock, 60) and _unlocked(lock)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """A temporary path beside `dest` for the caller to write; renamed onto `dest` when the block
    ends, removed if it raises: a reader (or a killed writer) never sees a half-written `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=TMP, suffix=dest.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

"""What a bundle may hold: size limits, no code, no pickles, JSON that parses into plain data.

The same rules keep code out of a model or adapter folder before a loader sees it
(`code_in_folder`), so this module sits below both `bundle` and `models`.
A bundle is untrusted. Its folder is walked once, without following symlinks and without
opening anything that is not a regular file, before any file is read, hashed or copied.
Everything here is iterative (no recursion on bundle-controlled depth) and imports no torch.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etr_hub.config import settings

DEFAULT_MAX_BUNDLE_MB = 2048  # the whole bundle folder; override: --max-bundle-mb / ETR_HUB_MAX_BUNDLE_MB
MAX_FILES = 10_000
MAX_DEPTH = 32  # folder nesting inside a bundle
MAX_JSON_BYTES = 64 << 20  # any one JSON file read into memory (a large tokenizer.json is ~20 MB)

# Formats that unpickle (and so can execute code) on load; a bundle carries safetensors only.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"})
# Code a library could import or run (transformers imports *.py named by auto_map).
CODE_SUFFIXES = {
    ".py",
    ".pyc",
    ".pyo",
    ".pyd",
    ".pyw",
    ".pyx",
    ".so",
    ".dylib",
    ".dll",
    ".exe",
    ".sh",
    ".bash",
    ".zsh",
    ".bat",
    ".cmd",
    ".ps1",
    ".js",
    ".mjs",
    ".jar",
    ".whl",
    ".egg",
}
CODE_MAGIC = (b"#!", b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")  # script, ELF, Mach-O
# Keys that make transformers import code shipped next to a config.
CODE_KEYS = ("auto_map",)


class Refused(Exception):
    """(problem, fix) for the caller to raise as its own error type."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def max_bundle_bytes(override_mb: float | None = None) -> int:
    """The largest bundle accepted: the flag, else ETR_HUB_MAX_BUNDLE_MB, else 2048 MB."""
    if override_mb is None:
        try:
            override_mb = settings().max_bundle_mb
        except ValueError as exc:
            raise Refused(str(exc), "set it to a size in MB, e.g. 4096") from None
        if override_mb is None:
            override_mb = DEFAULT_MAX_BUNDLE_MB
    if not 0 < override_mb < float("inf"):
        raise Refused(
            f"the largest-bundle limit must be a positive number of MB (got {override_mb})",
            "pass e.g. `max_bundle_mb=4096`",
        )
    return int(override_mb * 2**20)


@dataclass(frozen=True)
class Entry:
    rel: str  # posix path relative to the bundle root
    path: Path
    size: int
    symlink: bool


def scan(root: Path, *, max_bytes: int, strict: bool = True) -> list[Entry]:
    """Every file below `root`, checked; raises Refused for anything a bundle must not hold.

    strict=False (a provider's own adapter folder, e.g. a Hugging Face cache snapshot of symlinks,
    next to training_args.bin): only code is refused; links, pickles and odd files are skipped."""
    entries: list[Entry] = []
    total = 0
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        for path in _children(root, folder, depth):
            rel = path.relative_to(root).as_posix()
            try:
                info = _stat(path, rel)
            except Refused:
                if strict:
                    raise
                continue  # a broken link in a provider's folder: nothing a loader could run
            link = stat.S_ISLNK(os.lstat(path).st_mode)
            if stat.S_ISDIR(info.st_mode):
                if link and strict:
                    raise Refused(
                        f"'{rel}' is a symlinked folder", "copy the folder into the bundle instead of linking it"
                    )
                if not link:
                    stack.append((path, depth + 1))
                continue
            if not _allowed_file(root, path, rel, info, link=link, strict=strict):
                continue
            total += info.st_size
            entries.append(Entry(rel, path, info.st_size, link))
            _check_limits(len(entries), total, max_bytes, rel)
    return entries


def _children(root: Path, folder: Path, depth: int) -> list[Path]:
    if depth > MAX_DEPTH:
        raise Refused(
            f"'{folder.relative_to(root)}' is nested more than {MAX_DEPTH} folders deep", "flatten the bundle"
        )
    try:
        return [Path(child.path) for child in sorted(os.scandir(folder), key=lambda e: e.name)]
    except OSError as e:
        raise Refused(
            f"cannot list '{folder.relative_to(root)}' ({e.strerror})", "check the folder's permissions"
        ) from None


def _allowed_file(root: Path, path: Path, rel: str, info: os.stat_result, *, link: bool, strict: bool) -> bool:
    """True for a file the bundle may hold, False for one to skip (strict=False only); Refused otherwise."""
    if link and strict and not _within(root, path):
        raise Refused(
            f"'{rel}' is a symlink pointing outside the bundle", "copy the file into the bundle instead of linking it"
        )
    if not stat.S_ISREG(info.st_mode):
        if strict:
            raise Refused(f"'{rel}' is not a regular file (a pipe, socket or device)", "bundles hold plain files only")
        return False
    if strict or os.path.splitext(rel)[1].lower() not in PICKLE_SUFFIXES:  # a pickle nobody loads is harmless
        check_name(rel)
    if not rel.endswith(".safetensors"):
        _check_magic(path, rel)
    return True


def _check_limits(n_files: int, total: int, max_bytes: int, rel: str) -> None:
    if n_files > MAX_FILES:
        raise Refused(
            f"the bundle holds more than {MAX_FILES} files", "ship the token, query set, adapter and model card only"
        )
    if total > max_bytes:
        raise Refused(
            f"the bundle is larger than the limit of {max_bytes / 2**20:g} MB (at '{rel}')",
            "shrink it, or raise the limit with `max_bundle_mb` / ETR_HUB_MAX_BUNDLE_MB if you trust it",
        )


def _within(root: Path, path: Path) -> bool:
    try:
        return root.resolve() in path.resolve().parents
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop on Python < 3.13
        return False


def _stat(path: Path, rel: str) -> os.stat_result:
    try:
        return path.stat()  # follows a symlink; ELOOP for a loop
    except OSError as e:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise Refused(
                f"'{rel}' is a broken symlink or a symlink loop ({e.strerror})", "replace the link with the file itself"
            ) from None
        raise Refused(f"cannot read '{rel}' ({e.strerror})", "check the file's permissions") from None


def check_name(rel: str) -> None:
    suffix = os.path.splitext(rel)[1].lower()
    if suffix in PICKLE_SUFFIXES:
        raise Refused(
            f"'{rel}' is a pickle-based file",
            "bundles carry safetensors only; convert it with safetensors.torch.save_file",
        )
    if suffix in CODE_SUFFIXES:
        raise Refused(
            f"'{rel}' is code", "etr-hub never runs code from a bundle; remove it (a standard architecture needs none)"
        )


def _check_magic(path: Path, rel: str) -> None:
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(CODE_MAGIC):
        raise Refused(f"'{rel}' is a script or an executable", "etr-hub never runs code from a bundle; remove it")


def code_in_folder(folder: Path) -> str | None:
    """Why `folder` (a model or adapter folder) could make a loader run code, or None.

    The loaders pass trust_remote_code=False anyway; this is the same refusal for a folder that
    bypassed bundle validation (e.g. a file changed in the store)."""
    try:
        entries = scan(folder, max_bytes=1 << 62, strict=False)
        for e in entries:
            if e.rel.endswith(".json"):
                check_json_file(e.path, e.rel)
    except Refused as r:
        return r.problem
    return None


def read_json_file(path: Path, rel: str) -> Any:
    """Parse a bundle's JSON file; Refused (naming the file) for anything but valid UTF-8 JSON."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise Refused(f"cannot read '{rel}' ({e.strerror})", "check the file") from None
    if size > MAX_JSON_BYTES:
        raise Refused(
            f"'{rel}' is {size / 2**20:.1f} MB, more than the {MAX_JSON_BYTES >> 20} MB a JSON file may have",
            "ship a normal config file",
        )
    return parse_json(path.read_bytes(), rel)


def parse_json(data: bytes | str, rel: str, *, constants: bool = False) -> Any:
    """`constants`: accept NaN/Infinity (Python's json writes them; fine in data rows, never in a manifest)."""
    fix = f"write '{rel}' as UTF-8 JSON (json.dump)"
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text) if constants else json.loads(text, parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise Refused(f"'{rel}' is not UTF-8 (byte {e.start})", fix) from None
    except json.JSONDecodeError as e:
        raise Refused(f"'{rel}' is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})", fix) from None
    except RecursionError:
        raise Refused(
            f"'{rel}' nests JSON too deeply", "write a flat config; no real config nests more than a few levels"
        ) from None
    except ValueError as e:  # NaN/Infinity literals, integers too long to convert
        raise Refused(f"'{rel}' is not valid JSON ({' '.join(str(e).split())[:120]})", fix) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_json_file(path: Path, rel: str) -> Any:
    obj = read_json_file(path, rel)
    check_json_tree(obj, rel)
    return obj


def check_json_tree(obj: Any, rel: str) -> None:
    """Refuse keys that make loaders import code, and strings no database or terminal takes."""
    for key, value in walk(obj):
        if key in CODE_KEYS:
            raise Refused(
                f"'{rel}' has '{key}', which makes transformers import code shipped in the bundle",
                "remove it; etr-hub never runs code from a bundle (use a standard architecture/tokenizer class)",
            )
        if key == "trust_remote_code" and value:
            raise Refused(f"'{rel}' asks for trust_remote_code", "remove it; etr-hub never runs code from a bundle")
        for text in (key, value):
            if isinstance(text, str) and not _clean(text):
                raise Refused(
                    f"'{rel}' has a string with a NUL character or an unpaired surrogate",
                    "remove the control character",
                )


def _clean(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def walk(obj: Any) -> Iterator[tuple[str | None, Any]]:
    """(key, value) for every value in a JSON tree, depth first, without recursion."""
    stack: list[tuple[str | None, Any]] = [(None, obj)]
    while stack:
        key, value = stack.pop()
        yield key, value
        if isinstance(value, dict):
            stack.extend((str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((None, v) for v in value)

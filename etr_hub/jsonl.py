"""Reading JSONL that comes from outside (datasets, query sets, everyday prompts): line by line,
every problem named by file and line, as a DataError (callers re-raise as their own kind)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etr_hub.errors import DataError


def iter_jsonl(path: str | Path, label: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; `label` names the file in messages."""
    label = label or str(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{label}:{lineno} is not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})",
                    "save the file as UTF-8",
                ) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except RecursionError:
                raise DataError(
                    f"{label}:{lineno} nests JSON too deeply to read", "write one flat JSON object of strings per line"
                ) from None
            except ValueError as e:  # JSONDecodeError, or an integer too long to convert
                raise DataError(f"{label}:{lineno} is not JSON ({e})", "write one JSON object per line") from None
            if isinstance(value, dict):
                for key, v in value.items():
                    bad = next((s for s in (key, v) if isinstance(s, str) and not is_unicode(s)), None)
                    if bad is not None:  # it would break every tokenizer (and the terminal) later
                        raise DataError(
                            f"{label}:{lineno} field {key!r} holds an unpaired surrogate escape"
                            f" (\\u{_surrogate(bad):04x})",
                            "write the text as UTF-8 (escapes like \\ud83d must come in pairs)",
                        )
            yield lineno, value


def is_unicode(text: str) -> bool:
    """False for text holding a lone surrogate (no tokenizer or terminal takes it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _surrogate(text: str) -> int:
    return next(ord(c) for c in text if 0xD800 <= ord(c) <= 0xDFFF)


def query_column(path: str | Path, label: str | None = None) -> list[str]:
    """The 'query' of every row (query sets): each row must be an object with a non-empty one."""
    queries = []
    for lineno, row in iter_jsonl(path, label):
        if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not row["query"].strip():
            raise DataError(f"{label or path}:{lineno} has no non-empty 'query'", "every line needs a 'query' string")
        queries.append(row["query"])
    return queries

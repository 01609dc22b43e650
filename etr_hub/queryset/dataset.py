"""An instruction dataset: JSONL rows with `query` and `response` (and optionally a label)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from etr_hub.errors import DataError
from etr_hub.store import sha256_file


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    sha256: str
    rows: list[dict]

    def labels(self, field: str) -> list[str | None]:
        return [r.get(field) for r in self.rows]


def read_dataset(path: str | Path) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset {path} does not exist", "pass a JSONL file with one {\"query\": …, \"response\": …} object per line")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{lineno} is not JSON (the dataset must be JSONL)", "write one JSON object per line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno} is not a JSON object", "write one {\"query\": …, \"response\": …} object per line")
            for field in ("query", "response"):
                if field not in row:
                    raise DataError(f"{path}:{lineno} lacks '{field}'", "every row needs a 'query' and a 'response' string")
                if not isinstance(row[field], str) or not row[field].strip():
                    raise DataError(f"{path}:{lineno} has an empty or non-string '{field}'", "drop the row or fill it in")
            rows.append(row)
    if not rows:
        raise DataError(f"dataset {path} has no rows", "add (query, response) pairs, one JSON object per line")
    return Dataset(name=path.stem, path=path, sha256=sha256_file(path), rows=rows)

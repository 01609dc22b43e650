"""An instruction dataset: JSONL rows with `query` and `response` (and optionally a label)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from etr_hub.errors import DataError
from etr_hub.jsonl import iter_jsonl
from etr_hub.store import sha256_file


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    sha256: str
    rows: list[dict]
    lines: tuple[int, ...] = ()  # each row's line in the file (blank lines are skipped)

    def labels(self, field: str) -> list[str | None]:
        return [r.get(field) for r in self.rows]

    def line(self, i: int) -> int:
        """The file line of row `i`."""
        return self.lines[i] if self.lines else i + 1


def read_dataset(path: str | Path) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"dataset {path} does not exist", 'pass a JSONL file with one {"query": …, "response": …} object per line'
        )
    rows, lines = [], []
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(
                f"{path}:{lineno} is not a JSON object", 'write one {"query": …, "response": …} object per line'
            )
        for field in ("query", "response"):
            if field not in row:
                raise DataError(f"{path}:{lineno} lacks '{field}'", "every row needs a 'query' and a 'response' string")
            if not isinstance(row[field], str) or not row[field].strip():
                raise DataError(f"{path}:{lineno} has an empty or non-string '{field}'", "drop the row or fill it in")
        rows.append(row)
        lines.append(lineno)
    if not rows:
        raise DataError(f"dataset {path} has no rows", "add (query, response) pairs, one JSON object per line")
    return Dataset(name=path.stem, path=path, sha256=sha256_file(path), rows=rows, lines=tuple(lines))

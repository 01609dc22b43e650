"""MMLU in its original CSV format: reading, the one query rendering, and the recipe's split.

A row is `question,A,B,C,D,answer` with no header; fields may hold quoted commas and newlines,
so rows are read with the csv module, never split by hand. `render_query` is THE text a
question becomes, for routing, for letter scoring and for the shipped experts' training data:
if the recipe and the eval rendered questions differently, the eval would route queries the
tokens were never trained on.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from etr_hub.errors import DataError

LETTERS = ("A", "B", "C", "D")
MMLU_EXPERT_SUBJECTS = (
    "astronomy",
    "electrical_engineering",
    "human_sexuality",
    "international_law",
    "prehistory",
    "security_studies",
)
PARTS = ("train", "pool", "eval")  # expert training / query pool / development evaluation
DEFAULT_FRACTIONS = {"eval": 0.25, "pool": 0.5, "train": 0.25}
_SUBJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # "A".."D"
    source: str = ""  # "file.csv:LINE", for messages

    @property
    def answer_index(self) -> int:
        return LETTERS.index(self.answer)

    @property
    def key(self) -> str:
        """Identity of the question (stem + options), for caches and the split."""
        text = "\x1f".join((self.question, *self.choices))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class ReadResult:
    questions: dict[str, list[Question]]  # subject -> questions, file order
    skipped: list[str]  # one line per malformed row: "file:line: problem"
    files: list[str]


def render_query(q: Question) -> str:
    """The user message for an MMLU question: the stem, then the lettered options."""
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, q.choices))
    return f"{q.question.strip()}\n{options}"


ANSWER_PREFIX = "Answer:"  # the assistant's reply starts with this; the next token is the letter


def render_response(q: Question) -> str:
    """The reply in the shared style of the experts' training data and the query pool."""
    return f"{ANSWER_PREFIX} {q.answer}. {q.choices[q.answer_index].strip()}"


def subject_of(path: Path) -> str:
    """`SUBJECT_test.csv`, `SUBJECT_val.csv`, `SUBJECT_anything.csv` -> SUBJECT."""
    stem = path.stem
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def csv_files(data_dir: Path) -> list[Path]:
    if not data_dir.is_dir():
        raise DataError(
            f"{data_dir} is not a directory", "pass a `data_dir` that is a folder of MMLU CSVs (SUBJECT_test.csv)"
        )
    files = sorted(p for p in data_dir.glob("*.csv") if p.is_file())
    if not files:
        below = sorted({p.parent.name for p in data_dir.glob("*/*.csv")})
        hint = (
            f"its subfolders {', '.join(below)} do: pass one of them"
            if below
            else "MMLU files are named SUBJECT_test.csv"
        )
        raise DataError(f"no .csv files in {data_dir}", hint)
    return files


def read_mmlu_file(path: Path, subject: str | None = None) -> tuple[list[Question], list[str]]:
    """(questions, skipped-row messages) of one CSV; malformed rows are reported, not fatal."""
    subject = subject or subject_of(path)
    questions, skipped = [], []
    # surrogateescape: a non-UTF-8 byte marks its row (reported below) instead of ending the file
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f)
        while True:
            line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                skipped.append(f"{path.name}:{line}: not valid CSV ({exc})")
                break
            if not row or all(not cell.strip() for cell in row):
                continue
            raw = next((ord(c) - 0xDC00 for cell in row for c in cell if 0xDC80 <= ord(c) <= 0xDCFF), None)
            problem = f"not UTF-8 text (byte 0x{raw:02x})" if raw is not None else _row_problem(row)
            if problem:
                skipped.append(f"{path.name}:{line}: {problem}")
                continue
            answer = row[5].strip().upper()
            questions.append(Question(subject, row[0], (row[1], row[2], row[3], row[4]), answer, f"{path.name}:{line}"))
    return questions, skipped


def _row_problem(row: list[str]) -> str | None:
    if len(row) != 6:
        return f"{len(row)} columns, expected 6 (question,A,B,C,D,answer)"
    if row[5].strip().upper() not in LETTERS:
        return f"answer {row[5].strip()[:20]!r} is not one of A, B, C, D"
    if not row[0].strip():
        return "empty question"
    return None


def read_mmlu_dir(data_dir: str | Path, subjects: Iterable[str] | None = None) -> ReadResult:
    """Every `*.csv` in `data_dir` (not recursive), grouped by subject."""
    data_dir = Path(data_dir)
    files = csv_files(data_dir)
    wanted = set(subjects) if subjects else None
    if wanted:
        for s in wanted:
            if not _SUBJECT_RE.match(s):
                raise DataError(f"'{s}' is not an MMLU subject name", "use names like astronomy or international_law")
        present = {subject_of(p) for p in files}
        missing = sorted(wanted - present)
        if missing and not (wanted & present):
            raise DataError(
                f"no CSV in {data_dir} for {', '.join(missing)}", f"subjects there: {', '.join(sorted(present)[:10])}…"
            )
    out: dict[str, list[Question]] = {}
    skipped: list[str] = []
    used = []
    for path in files:
        subject = subject_of(path)
        if wanted and subject not in wanted:
            continue
        qs, bad = read_mmlu_file(path, subject)
        out.setdefault(subject, []).extend(qs)
        skipped += bad
        used.append(path.name)
    if not any(out.values()):
        raise DataError(
            f"no readable MMLU rows in {data_dir}" + (f" ({skipped[0]})" if skipped else ""),
            "rows are question,A,B,C,D,answer with the answer a letter A–D",
        )
    return ReadResult(questions=out, skipped=skipped, files=used)


def split_subject(
    questions: list[Question], *, seed: int, fractions: dict[str, float] = DEFAULT_FRACTIONS
) -> dict[str, list[Question]]:
    """Deterministic, disjoint split of one subject into train / pool / eval.

    Questions sharing a stem (MMLU repeats a few stems with other options) go to the same part,
    so nothing about an eval question is seen in training. The order is a seeded hash of the
    stem, so the split does not depend on file order and adding rows moves few others.
    """
    if abs(sum(fractions.values()) - 1.0) > 1e-6 or set(fractions) != set(PARTS):
        raise ValueError(f"fractions must cover {PARTS} and sum to 1")
    groups: dict[str, list[Question]] = {}
    for q in questions:
        groups.setdefault(" ".join(q.question.lower().split()), []).append(q)
    order = sorted(groups, key=lambda stem: hashlib.sha256(f"{seed}\x1f{stem}".encode()).hexdigest())
    n = len(questions)
    targets = {"eval": round(n * fractions["eval"]), "pool": round(n * fractions["pool"])}
    parts: dict[str, list[Question]] = {p: [] for p in PARTS}
    for stem in order:
        part = next((p for p in ("eval", "pool") if len(parts[p]) < targets[p]), "train")
        parts[part].extend(groups[stem])
    return parts


def pick_distractors(by_subject: dict[str, list[Question]], n: int, *, seed: int) -> list[Question]:
    """`n` questions spread evenly over the given subjects, chosen by a seeded hash."""
    subjects = sorted(s for s in by_subject if by_subject[s])
    if not subjects or n <= 0:
        return []
    ranked = {
        s: sorted(by_subject[s], key=lambda q: hashlib.sha256(f"{seed}\x1f{q.key}".encode()).hexdigest())
        for s in subjects
    }
    picked: list[Question] = []
    depth = 0
    while len(picked) < n and any(depth < len(ranked[s]) for s in subjects):
        for s in subjects:
            if depth < len(ranked[s]) and len(picked) < n:
                picked.append(ranked[s][depth])
        depth += 1
    return picked


def write_mmlu_csv(path: Path, questions: list[Question]) -> None:
    """Write questions back in the original format (no header; csv quoting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        for q in questions:
            writer.writerow([q.question, *q.choices, q.answer])

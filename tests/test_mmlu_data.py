"""MMLU CSV reading, the one query rendering, and the recipe's deterministic, disjoint split."""

from __future__ import annotations

import random

import pytest

from etr_hub.errors import DataError
from etr_hub.eval.mmlu import (
    Question,
    pick_distractors,
    read_mmlu_dir,
    read_mmlu_file,
    render_query,
    render_response,
    split_subject,
    subject_of,
    write_mmlu_csv,
)

TRICKY = (
    '"Which is true, if any?\nPick one.",A star,"A planet, maybe",The moon,"He said ""no""",B\nWhat is 2+2?,3,4,5,6,b\n'
)


def test_reads_quoted_commas_newlines_and_lowercase_answers(tmp_path):
    (tmp_path / "astronomy_test.csv").write_text(TRICKY)
    qs, skipped = read_mmlu_file(tmp_path / "astronomy_test.csv")
    assert skipped == []
    assert [q.answer for q in qs] == ["B", "B"]
    assert qs[0].question == "Which is true, if any?\nPick one."
    assert qs[0].choices == ("A star", "A planet, maybe", "The moon", 'He said "no"')
    assert qs[0].subject == "astronomy"
    assert (
        render_query(qs[0])
        == 'Which is true, if any?\nPick one.\nA. A star\nB. A planet, maybe\nC. The moon\nD. He said "no"'
    )
    assert render_response(qs[0]) == "Answer: B. A planet, maybe"


@pytest.mark.parametrize(
    "row, problem",
    [
        ("q,a,b,c,d\n", "5 columns, expected 6 (question,A,B,C,D,answer)"),
        ("q,a,b,c,d,A,extra\n", "7 columns, expected 6 (question,A,B,C,D,answer)"),
        ("q,a,b,c,d,E\n", "answer 'E' is not one of A, B, C, D"),
        ("q,a,b,c,d,\n", "answer '' is not one of A, B, C, D"),
        (",a,b,c,d,A\n", "empty question"),
    ],
)
def test_malformed_rows_are_skipped_with_file_and_line(tmp_path, row, problem):
    (tmp_path / "law_test.csv").write_text("ok,a,b,c,d,A\n" + row + "fine,a,b,c,d,C\n")
    res = read_mmlu_dir(tmp_path)
    assert [q.question for q in res.questions["law"]] == ["ok", "fine"]
    assert res.skipped == [f"law_test.csv:2: {problem}"]


def test_line_numbers_count_embedded_newlines(tmp_path):
    (tmp_path / "x_test.csv").write_text('"two\nlines",a,b,c,d,A\nbad,a,b\n')
    assert read_mmlu_dir(tmp_path).skipped == ["x_test.csv:3: 3 columns, expected 6 (question,A,B,C,D,answer)"]


def test_no_csvs_is_a_one_line_error_with_a_hint(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "astronomy_test.csv").write_text("q,a,b,c,d,A\n")
    with pytest.raises(DataError, match=r"no \.csv files in .* its subfolders test do: pass one of them"):
        read_mmlu_dir(tmp_path)
    with pytest.raises(DataError, match="is not a directory"):
        read_mmlu_dir(tmp_path / "nope")


def test_only_malformed_rows_is_an_error(tmp_path):
    (tmp_path / "a_test.csv").write_text("q,a,b\n")
    with pytest.raises(DataError, match=r"no readable MMLU rows.*3 columns"):
        read_mmlu_dir(tmp_path)


@pytest.mark.parametrize(
    "name, subject",
    [
        ("astronomy_test.csv", "astronomy"),
        ("international_law_val.csv", "international_law"),
        ("security_studies_heldout.csv", "security_studies"),
        ("plain.csv", "plain"),
    ],
)
def test_subject_from_file_name(tmp_path, name, subject):
    assert subject_of(tmp_path / name) == subject


def test_subject_filter(tmp_path):
    for s in ("astronomy", "prehistory"):
        (tmp_path / f"{s}_test.csv").write_text(f"{s} q,a,b,c,d,A\n")
    assert list(read_mmlu_dir(tmp_path, ["prehistory"]).questions) == ["prehistory"]
    with pytest.raises(DataError, match=r"no CSV in .* for virology"):
        read_mmlu_dir(tmp_path, ["virology"])


def _questions(n: int, subject: str = "astronomy", repeat_every: int = 0) -> list[Question]:
    out = []
    for i in range(n):
        stem = f"stem {i // 2}" if repeat_every and i % repeat_every == 0 else f"question {i}"
        out.append(Question(subject, stem, (f"a{i}", f"b{i}", f"c{i}", f"d{i}"), "ABCD"[i % 4]))
    return out


@pytest.mark.parametrize("n", [1, 7, 40, 103])
def test_split_is_disjoint_complete_and_sized(n):
    qs = _questions(n)
    parts = split_subject(qs, seed=0)
    keys = [q.key for p in parts.values() for q in p]
    assert sorted(keys) == sorted(q.key for q in qs)  # complete and disjoint
    assert len(parts["eval"]) == round(n * 0.25) and len(parts["pool"]) == round(n * 0.5)


def test_split_is_deterministic_and_independent_of_file_order():
    qs = _questions(60)
    shuffled = qs[:]
    random.Random(1).shuffle(shuffled)
    a, b = split_subject(qs, seed=0), split_subject(shuffled, seed=0)
    assert {p: sorted(q.key for q in v) for p, v in a.items()} == {p: sorted(q.key for q in v) for p, v in b.items()}
    c = split_subject(qs, seed=1)
    assert {q.key for q in c["eval"]} != {q.key for q in a["eval"]}  # the seed matters


def test_repeated_stems_stay_in_one_part():
    qs = _questions(40, repeat_every=2)  # "stem k" appears with two option sets
    parts = split_subject(qs, seed=3)
    where = {}
    for part, items in parts.items():
        for q in items:
            where.setdefault(q.question, set()).add(part)
    assert all(len(p) == 1 for p in where.values())


def test_distractors_are_spread_and_deterministic():
    by = {"a": _questions(10, "a"), "b": _questions(3, "b"), "c": _questions(10, "c")}
    picked = pick_distractors(by, 9, seed=0)
    assert [q.subject for q in picked].count("b") == 3 and len(picked) == 9
    assert [q.key for q in picked] == [q.key for q in pick_distractors(by, 9, seed=0)]


def test_written_csv_reads_back(tmp_path):
    qs = read_mmlu_file(_write(tmp_path))[0]
    write_mmlu_csv(tmp_path / "out" / "astronomy_test.csv", qs)
    again = read_mmlu_dir(tmp_path / "out").questions["astronomy"]
    assert [(q.question, q.choices, q.answer) for q in again] == [(q.question, q.choices, q.answer) for q in qs]


def _write(tmp_path):
    path = tmp_path / "astronomy_test.csv"
    path.write_text(TRICKY)
    return path

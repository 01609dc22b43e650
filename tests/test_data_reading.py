"""Reading untrusted JSONL and CSV: every bad line is named by file and line, one DataError (or, for
MMLU CSVs, one reported row); nothing else escapes. Table-driven cases plus a property test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etr_hub.errors import DataError
from etr_hub.eval.mmlu import read_mmlu_file
from etr_hub.jsonl import query_column
from etr_hub.queryset.dataset import read_dataset
from etr_hub.session import read_general_prompts
from etr_hub.store import sha256_file
from tests.helpers import make_bundle, run_cli

GOOD = b'{"query": "q", "response": "r"}\n'
DEEP = b'{"query": "q", "response": "r", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"

BAD_LINES = [
    # (id, the file's bytes, line named, what the message says)
    ("latin-1", GOOD + b'{"query": "caf\xe9", "response": "r"}\n', 2, "is not UTF-8 text (byte 0xe9 at column 15)"),
    ("binary", GOOD + GOOD + b"\x00\xff\xfe\x89PNG\n", 3, "is not UTF-8 text (byte 0xff"),
    ("deep-json", GOOD + DEEP, 2, "nests JSON too deeply"),
    ("huge-integer", b'{"query": "q", "response": "r", "n": ' + b"9" * 5000 + b"}\n", 1, "is not JSON"),
    ("lone-surrogate", GOOD + b'{"query": "\\ud800 q", "response": "r"}\n', 2, "unpaired surrogate escape (\\ud800)"),
    ("not-json", b"\n" + GOOD + b"query,response\n", 3, "is not JSON"),  # the blank line still counts
]


@pytest.mark.parametrize("data,line,problem", [pytest.param(*row[1:], id=row[0]) for row in BAD_LINES])
def test_bad_dataset_line_is_named(tmp_path, data, line, problem):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        read_dataset(path)
    assert err.value.problem.startswith(f"{path}:{line} ") and problem in err.value.problem, err.value.problem
    with pytest.raises(DataError, match=f":{line} "):  # the registry's query sets are read the same way
        query_column(path)


def test_dataset_keeps_line_numbers_and_reads_a_bom(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD + b"\n  \n" + GOOD.replace(b'"q"', b'"caf\xc3\xa9"'))
    data = read_dataset(path)
    assert [r["query"] for r in data.rows] == ["q", "café"] and data.lines == (1, 4)


@pytest.mark.parametrize("data,line,problem", [pytest.param(*row[1:], id=row[0]) for row in BAD_LINES[:3]])
def test_query_set_build_names_the_line_through_the_console_script(tmp_path, data, line, problem):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    res = run_cli("query-set", "build", "astro", "--expert", "openai:http://127.0.0.1:9/v1#astro", "--data", str(path))
    assert res.returncode == 5, res.stderr
    [message] = res.stderr.strip().splitlines()  # one line, nothing else
    assert message.startswith(f"error: {path}:{line} ") and problem in message, message


@pytest.mark.parametrize("data,line,problem", [pytest.param(*row[1:], id=row[0]) for row in BAD_LINES[:3]])
def test_bundle_query_set_names_the_line(tmp_path, fake_meta, data, line, problem):
    bundle = make_bundle(tmp_path / "b")
    (bundle / "query_set.jsonl").write_bytes(data)
    manifest = json.loads((bundle / "expert.json").read_text())
    manifest["query_set"]["sha256"] = sha256_file(bundle / "query_set.jsonl")
    (bundle / "expert.json").write_text(json.dumps(manifest))
    res = run_cli("expert", "add", str(bundle))
    assert res.returncode == 2, res.stderr
    [message] = res.stderr.strip().splitlines()
    assert (
        message.startswith("error: bundle ") and f"query set query_set.jsonl:{line} " in message and problem in message
    ), message


def test_everyday_prompts_name_the_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"query": "hello", "split": "eval"}\n{"query": "caf\xe9", "split": "eval"}\n')
    with pytest.raises(DataError, match=r"prompts\.jsonl:2 is not UTF-8 text"):
        read_general_prompts(path)
    path.write_bytes(b'{"query": "hello", "split": "eval"}\n["a list"]\n')
    with pytest.raises(DataError, match=r"prompts\.jsonl:2 is not a JSON object"):
        read_general_prompts(path)


def test_mmlu_csv_reports_a_non_utf8_row_and_reads_the_rest(tmp_path):
    path = tmp_path / "astronomy_test.csv"
    path.write_bytes(
        b"What is a star?,gas,rock,ice,dust,A\nCaf\xe9 star?,a,b,c,d,B\nWhat orbits Earth?,Moon,Sun,Mars,Venus,A\n"
    )
    questions, skipped = read_mmlu_file(path)
    assert [q.question for q in questions] == ["What is a star?", "What orbits Earth?"]
    assert skipped == ["astronomy_test.csv:2: not UTF-8 text (byte 0xe9)"]


# -- property: whatever the bytes, a Dataset or a DataError ---------------------------------------------
JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text()
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
ROW = st.fixed_dictionaries(
    {"query": st.text() | JSON_VALUES, "response": st.text() | JSON_VALUES}, optional={"label": JSON_VALUES}
)


def _line(kind_and_value) -> bytes:
    kind, value = kind_and_value
    if kind == "bytes":
        return value
    if kind == "deep":
        return b"[" * value + b"]" * value
    if kind == "huge":
        return b'{"query": "q", "response": ' + b"7" * value + b"}"
    return json.dumps(value, allow_nan=True).encode()


LINES = st.one_of(
    st.tuples(st.just("row"), ROW),
    st.tuples(st.just("json"), JSON_VALUES),
    st.tuples(st.just("bytes"), st.binary(max_size=40)),
    st.tuples(st.just("deep"), st.integers(900, 50_000)),
    st.tuples(st.just("huge"), st.integers(4000, 6000)),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(LINES, min_size=1, max_size=6))
def test_dataset_reading_is_a_dataset_or_a_data_error(tmp_path, lines):
    path = tmp_path / "prop.jsonl"
    path.write_bytes(b"\n".join(_line(x).replace(b"\n", b" ") for x in lines) + b"\n")
    try:
        data = read_dataset(path)
    except DataError as exc:
        assert str(path) in exc.problem and exc.fix and "\n" not in str(exc)
        return
    for row in data.rows:  # what is accepted is text every tokenizer can take
        assert isinstance(row["query"], str) and isinstance(row["response"], str)
        row["query"].encode("utf-8"), row["response"].encode("utf-8")
    assert len(data.lines) == len(data.rows) and all(1 <= n <= len(lines) for n in data.lines)


def test_property_test_sees_real_rows(tmp_path):
    """The generator above can produce a readable dataset at all (else the property is vacuous)."""
    path = Path(tmp_path / "ok.jsonl")
    path.write_bytes(_line(("row", {"query": "a", "response": "b"})) + b"\n")
    assert read_dataset(path).rows == [{"query": "a", "response": "b"}]

"""Property-based tests of bundle validation (issue #15, item 7): generated JSON — deep nesting,
huge numbers, NaN/Infinity, non-UTF-8 bytes, odd strings — in a bundle's manifest and its
adapter/tokenizer configs gives a valid Bundle or a one-line BundleError (exit code 2), never
another exception."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etr_hub.bundle import Bundle, load_bundle
from etr_hub.errors import BundleError
from tests.helpers import make_bundle

_TEMPLATE: list[Path] = []


def template() -> Path:
    """One valid LoRA bundle, built once; each example works on a copy."""
    if not _TEMPLATE:
        _TEMPLATE.append(make_bundle(Path(tempfile.mkdtemp(prefix="etr-prop-")) / "bundle", "astronomy", adapter=True))
    return _TEMPLATE[0]


def check(files: dict[str, bytes]) -> None:
    """Write `files` over a copy of the template; validation must accept or raise BundleError."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(shutil.copytree(template(), Path(tmp) / "bundle"))
        for rel, data in files.items():
            (root / rel).write_bytes(data)
        try:
            bundle = load_bundle(root)
        except BundleError as e:
            assert e.exit_code == 2 and "\n" not in str(e) and str(e).startswith(f"bundle {root}")
        else:
            assert isinstance(bundle, Bundle)


def deep(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a": ' * depth + "1" + "}" * depth


odd_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=30)  # NUL, controls, surrogates
numbers = st.one_of(
    st.integers(min_value=-(10**80), max_value=10**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**31 - 1, 2**31, 2**63, -(2**63) - 1, 1e308, 5e-324]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | odd_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(odd_text, children, max_size=4),
    max_leaves=12,
)
PATHS = [
    ("name",),
    ("version",),
    ("label",),
    ("description",),
    ("license",),
    ("expert",),
    ("expert", "path"),
    ("expert", "base"),
    ("meta", "hidden_size"),
    ("meta", "fingerprint"),
    ("token", "shape"),
    ("token", "file"),
    ("token", "dtype"),
    ("query_set", "size"),
    ("query_set", "tau"),
    ("query_set", "file"),
    ("query_set", "loss_gap"),
    ("model_card",),
    ("training",),
    ("created_at",),
    ("schema_version",),
]


def manifest() -> dict:
    return json.loads((template() / "expert.json").read_text())


def with_value(path: tuple[str, ...], value) -> dict:
    m = copy.deepcopy(manifest())
    node = m
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return m


@given(
    path=st.sampled_from(PATHS),
    value=json_values,
    corrupt=st.one_of(st.none(), st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=3))),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_manifest_values(path, value, corrupt):
    text = json.dumps(with_value(path, value), ensure_ascii=bool(corrupt is None))  # NaN/Infinity literals included
    data = text.encode("utf-8", "surrogatepass")  # lone surrogates become bytes no UTF-8 decoder takes
    if corrupt is not None:  # splice raw bytes (often not UTF-8) somewhere into the file
        at, junk = corrupt
        at %= len(data) + 1
        data = data[:at] + junk + data[at:]
    check({"expert.json": data})


@given(
    depth=st.integers(1, 120_000),
    kind=st.sampled_from(["list", "dict"]),
    where=st.sampled_from(["description", "expert", "whole"]),
)
@settings(max_examples=40, deadline=None)
def test_deeply_nested_manifests(depth, kind, where):
    nested = deep(depth, kind)
    if where == "whole":
        data = nested
    else:
        text = json.dumps(with_value((where,), "@@"))
        data = text.replace('"@@"', nested)
    check({"expert.json": data.encode()})


@given(
    digits=st.integers(1, 20_000),
    where=st.sampled_from(["query_set.size", "meta.hidden_size", "query_set.tau", "token.shape"]),
    sign=st.sampled_from(["", "-"]),
    exp=st.sampled_from(["", "e999", "e-999", ".5"]),
)
@settings(max_examples=60, deadline=None)
def test_huge_numbers(digits, where, sign, exp):
    outer, inner = where.split(".")
    text = json.dumps(with_value((outer, inner), "@@")).replace('"@@"', sign + "9" * digits + exp)
    check({"expert.json": text.encode()})


@given(
    name=st.sampled_from(["adapter/adapter_config.json", "adapter/tokenizer_config.json", "adapter/config.json"]),
    payload=st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.builds(deep, st.integers(1, 100_000), st.sampled_from(["list", "dict"])).map(str.encode),
    ),
)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_adapter_configs(name, payload):
    check({name: payload})


@given(data=st.binary(max_size=400))
@settings(max_examples=80, deadline=None)
def test_arbitrary_bytes_as_the_manifest(data):
    check({"expert.json": data})

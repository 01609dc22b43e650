"""Property-based tests of manifest parsing: any JSON in, a Manifest or a BundleError out."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from etr_hub.bundle.io import parse_manifest
from etr_hub.bundle.manifest import Manifest
from etr_hub.errors import BundleError

VALID = {
    "schema_version": 1,
    "name": "astronomy",
    "version": "1.0.0",
    "license": "MIT",
    "provider": "p",
    "expert": {"kind": "local", "path": "/m"},
    "meta": {"reference": "m", "hidden_size": 16, "vocab_size": 100, "fingerprint": "a" * 64},
    "token": {"sha256": "b" * 64, "shape": [1, 16], "dtype": "float32"},
}
ROOT = Path("bundle")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),  # JSON has no NaN/Infinity (refused as not JSON: test_bundle_property)
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


@given(key=st.sampled_from(sorted(VALID)), value=json_values)
@example(key="name", value="optics")  # accepted: both branches below run on every test run
@example(key="name", value=5)  # rejected
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_replacing_a_field_gives_manifest_or_bundle_error(key, value):
    """Accepted: the manifest holds the value and survives its own JSON; rejected: the documented
    error, a one-line BundleError (exit 2) that names the bundle and the field."""
    raw = {**VALID, key: value}
    try:
        m = parse_manifest(ROOT, json.dumps(raw))
    except BundleError as e:
        assert e.exit_code == 2 and "\n" not in str(e)
        assert str(e).startswith(f"bundle {ROOT}: ") and (key in str(e) or "trust_remote_code" in str(e)), str(e)
    else:
        if not isinstance(value, dict | list):
            assert getattr(m, key) == value
        assert parse_manifest(ROOT, m.model_dump_json(by_alias=True, exclude_none=True)) == m  # round trip


KNOWN = set(VALID) | set(Manifest.model_fields) | {f.alias for f in Manifest.model_fields.values() if f.alias}


@given(
    extra=st.text(min_size=1, max_size=12).filter(lambda k: k not in KNOWN), value=json_values
)  # optional fields are not unknown
def test_unknown_top_level_fields_are_rejected(extra, value):
    try:
        parse_manifest(ROOT, json.dumps({**VALID, extra: value}))
    except BundleError as e:
        assert "unknown field" in str(e) or "trust_remote_code" in str(e)
    else:
        raise AssertionError("an unknown field was accepted")


@given(text=st.text(max_size=200))
def test_arbitrary_text_is_a_manifest_or_one_line_bundle_error(text):
    try:
        m = parse_manifest(ROOT, text)
    except BundleError as e:
        assert e.exit_code == 2 and "\n" not in str(e) and str(e).startswith("bundle ")
    else:  # only a text that is the JSON of a valid manifest gets through
        assert isinstance(m, Manifest) and json.loads(text)["name"] == m.name


@given(
    name=st.from_regex(r"^[a-z0-9][a-z0-9_-]{0,20}$", fullmatch=True),
    version=st.from_regex(r"^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$", fullmatch=True),
)
def test_valid_names_and_versions_round_trip(name, version):
    m = parse_manifest(ROOT, json.dumps({**VALID, "name": name, "version": version}))
    assert (m.name, m.version) == (name, version)

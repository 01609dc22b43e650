"""Library errors name parameters; the CLI shows them as its flags (etr_hub/cli/flags.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from etr_hub.cli.flags import FLAGS, as_flags
from etr_hub.errors import EtrHubError

PACKAGE = Path(__file__).resolve().parents[1] / "etr_hub"
PARAMETER = re.compile(r"`([a-z_]+)(?:=[^`]*)?`")


@pytest.mark.parametrize(
    "library,cli",
    [
        ("lower `lr` (the paper's is 5e-4)", "lower --lr (the paper's is 5e-4)"),
        ("lower τ, e.g. `tau=0.5`", "lower τ, e.g. --tau 0.5"),
        ("pass `replace=True` or choose another `out`", "pass --replace or choose another --out"),
        ("`rule=labelled` needs `label`", "--rule labelled needs --label"),
        ("map each task with `mapping` (TASK=EXPERT)", "map each task with --map (TASK=EXPERT)"),
        ("see `etr-hub expert list`", "see `etr-hub expert list`"),  # a command, not a parameter
        ("`not_a_parameter` and `name`", "`not_a_parameter` and `name`"),  # unknown names stay
    ],
)
def test_parameters_become_flags(library, cli):
    assert as_flags(library) == cli


def _message_strings(tree: ast.AST):
    """Every string literal (or f-string part) passed to a call that raises or records a message."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if not (func.endswith("Error") or func in ("Refused", "_fail", "append")):
            continue
        for arg in node.args:
            in_fstrings = {id(v) for f in ast.walk(arg) if isinstance(f, ast.JoinedStr) for v in f.values}
            for part in ast.walk(arg):
                if isinstance(part, ast.JoinedStr):  # f"… `tau={x}` …": the values stand in as "{}"
                    yield "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in part.values)
                elif isinstance(part, ast.Constant) and isinstance(part.value, str) and id(part) not in in_fstrings:
                    yield part.value


def test_every_parameter_a_library_message_names_has_a_flag():
    """A new message naming a parameter without a flag here would reach CLI users in backticks."""
    named = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for text in _message_strings(ast.parse(path.read_text(encoding="utf-8"))):
            for name in PARAMETER.findall(text):
                named.setdefault(name, path.name)
    assert {"tau", "max_tokens", "lr", "replace", "allow_env"} <= set(named)  # the scan sees the messages
    assert {n: p for n, p in named.items() if n not in FLAGS} == {}


def test_library_errors_name_parameters_not_flags():
    from etr_hub.queryset.build import QuerySetSpec, SelectionRule

    with pytest.raises(EtrHubError) as labelled:
        SelectionRule(rule="labelled")
    with pytest.raises(EtrHubError) as short:
        QuerySetSpec("astro", "expert", "data.jsonl", max_tokens=1)
    for exc in (labelled.value, short.value):
        assert "--" not in str(exc) and "`" in str(exc), str(exc)
    assert as_flags(str(labelled.value)).startswith("--rule labelled needs --label")
    assert as_flags(str(short.value)).startswith("--max-tokens must be at least 2 (got 1)")

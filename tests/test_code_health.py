"""Size limits the package keeps: short functions, modules a reader can hold in mind."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "etr_hub"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450  # "about 400": a module past this wants splitting


def _functions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def long_functions(root: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for name, line, length in _functions(path):
            if length > limit:
                found.append(f"{path.relative_to(root.parent)}:{line} {name}() is {length} lines")
    return found


def test_no_function_in_the_package_is_over_60_lines():
    assert long_functions(PACKAGE, MAX_FUNCTION_LINES) == []


def test_no_module_in_the_package_is_over_the_size_limit():
    sizes = {
        p.relative_to(PACKAGE.parent): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}


@pytest.mark.parametrize(("body_lines", "flagged"), [(57, False), (58, False), (59, True)])
def test_the_length_check_counts_the_def_line_and_the_body(tmp_path, body_lines, flagged):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("def f():\n" + "    x = 1\n" * body_lines + "    return x\n")  # 1 + body + 1 lines
    assert bool(long_functions(pkg, MAX_FUNCTION_LINES)) is flagged

"""Imports flow one way and never in a circle (README, "Architecture").

The layers are pyproject.toml's [tool.importlinter] contracts, run here as `lint-imports` runs
them in a shell; cycles are also found independently, on grimp's graph of every import in
etr_hub (function-local and TYPE_CHECKING ones included). Each check is also shown to fail
on the graph with one wrong import added, so a check that cannot fail does not pass unnoticed.
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def contract_results(graph: grimp.ImportGraph) -> dict[str, bool]:
    """pyproject's import contracts checked on `graph`: contract id -> kept."""
    from importlinter import api  # also configures import-linter
    from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
    from importlinter.contracts.forbidden import ForbiddenContract
    from importlinter.contracts.layers import LayersContract

    types = {"layers": LayersContract, "forbidden": ForbiddenContract, "acyclic_siblings": AcyclicSiblingsContract}
    config = api.read_configuration(str(ROOT / "pyproject.toml"))
    results = {}
    for options in config["contracts_options"]:
        contract_options = {k: v for k, v in options.items() if k not in ("id", "type")}
        contract = types[options["type"]](options["name"], config["session_options"], contract_options)
        results[options["id"]] = contract.check(graph, verbose=False).kept
    return results


def import_cycles(graph: grimp.ImportGraph) -> list[str]:
    """Every import cycle: between modules, and between the modules and packages side by side in
    each package (`etr_hub: backends <-> runtime` when either imports anything of the other)."""
    imports = {(m, i) for m in graph.modules for i in graph.find_modules_directly_imported_by(m)}
    found = [" <-> ".join(group) for group in _cycles(imports)]
    for package in sorted(graph.modules):
        children = graph.find_children(package)
        owner = {m: c for c in children for m in (c, *graph.find_descendants(c))}  # module -> its child of package
        pairs = ((owner.get(a), owner.get(b)) for a, b in imports)
        siblings = {(x, y) for x, y in pairs if x is not None and y is not None and x != y}
        tail = len(package) + 1
        found += [f"{package}: " + " <-> ".join(m[tail:] for m in group) for group in _cycles(siblings)]
    return found


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The groups of two or more nodes that reach one another along `edges`."""
    succ: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        succ[a].add(b)
    reach = {node: _reachable(succ, node) for node in list(succ)}
    groups = {frozenset({n, *(m for m in reach[n] if n in reach.get(m, ()))}) for n in reach}
    return sorted(sorted(g) for g in groups if len(g) > 1)


def _reachable(succ: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in succ.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("etr_hub", cache_dir=None)


def test_lint_imports_keeps_every_contract():
    """What a developer runs: the `lint-imports` console script, on pyproject's contracts."""
    script = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(script), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def test_the_contracts_hold(graph):
    assert contract_results(graph) == {"layers": True, "backends-are-plug-ins": True, "no-cycles": True}


def test_no_import_cycles(graph):
    assert import_cycles(graph) == []


def test_a_backend_importing_the_runtime_breaks_every_contract(graph):
    graph.add_import(
        importer="etr_hub.backends.local.backend",
        imported="etr_hub.runtime.decode",
        line_number=1,
        line_contents="from etr_hub.runtime.decode import RoutedDecoder",
    )
    try:
        assert contract_results(graph) == {"layers": False, "backends-are-plug-ins": False, "no-cycles": False}
        assert "etr_hub: backends <-> runtime" in import_cycles(graph)
    finally:
        graph.remove_import(importer="etr_hub.backends.local.backend", imported="etr_hub.runtime.decode")


def test_a_module_cycle_is_found(graph):
    """The cycle the generation package broke: the causal runner importing the prefix donor,
    which imports the causal runner (runtime/decode.py <-> runtime/shared_prefix.py before)."""
    graph.add_import(importer="etr_hub.generation.runner", imported="etr_hub.generation.shared_prefix")
    try:
        assert import_cycles(graph) == [
            "etr_hub.generation.runner <-> etr_hub.generation.shared_prefix",
            "etr_hub.generation: runner <-> shared_prefix",
        ]
    finally:
        graph.remove_import(importer="etr_hub.generation.runner", imported="etr_hub.generation.shared_prefix")

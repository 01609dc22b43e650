"""Typos through the real console script, for EVERY command (walked from the Typer app, so new
commands are covered): exit 2 with Click's usage message, never "internal error", no traceback,
no torch import. And `etr-hub --version`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version

import pytest

from tests.helpers import run_cli


def _commands():
    """(path, command) for the root, every group and every command, depth first."""
    from typer.main import get_command

    from etr_hub.cli.main import app

    stack = [((), get_command(app))]
    while stack:
        path, cmd = stack.pop()
        yield path, cmd
        for name, sub in sorted(getattr(cmd, "commands", {}).items(), reverse=True):
            stack.append(((*path, name), sub))


def _usage_cases() -> list[tuple[list[str], str]]:
    """(argv, what stderr must say) for every command: an unknown option; for a group an unknown
    subcommand; for a command with required arguments or options, none of them."""
    cases = []
    for path, cmd in _commands():
        cases.append(([*path, "--no-such-option"], "No such option"))
        if hasattr(cmd, "commands"):
            cases.append(([*path, "nosuchcmd"], "No such command"))
        elif any(p.required for p in cmd.params):
            cases.append((list(path), "Missing"))
    return cases


CASES = _usage_cases()


def test_the_walk_sees_every_command():
    paths = {" ".join(p) for p, _ in _commands()}
    assert {
        "",
        "expert",
        "expert add",
        "query-set build",
        "train-token",
        "chat",
        "explain",
        "serve",
        "eval mmlu",
        "init",
    } <= paths
    assert (["expert", "add"], "Missing") in CASES and (["chat", "--no-such-option"], "No such option") in CASES


def test_usage_errors_exit_2_with_the_usage_message():
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: run_cli(*case[0], timeout=60), CASES))
    for (argv, says), res in zip(CASES, results):
        where = f"etr-hub {' '.join(argv)}: exit {res.returncode}\n{res.stderr}"
        assert res.returncode == 2, where
        assert "Usage: etr-hub" in res.stderr and says in res.stderr, where
        assert "internal error" not in res.stderr and "Traceback" not in res.stderr, where


def test_usage_errors_do_not_import_torch():
    """All the cases in one process: a typo costs no model stack."""
    code = (
        "import json, sys\nimport etr_hub.cli.main as m\n"
        "codes = []\n"
        f"for argv in json.loads({json.dumps(json.dumps([c[0] for c in CASES]))}):\n"
        "    try:\n        m.app(argv, prog_name='etr-hub')\n"
        "    except SystemExit as e:\n        codes.append(e.code)\n"
        "print(json.dumps([codes, [x for x in ('torch', 'transformers', 'peft', 'sqlmodel') if x in sys.modules]]))\n"
    )
    probe = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    codes, heavy = json.loads(probe.stdout.strip().splitlines()[-1])
    assert codes == [2] * len(CASES), probe.stderr
    assert heavy == []


@pytest.mark.parametrize("argv", [["--version"], ["--version", "expert", "list"]])
def test_version(argv):
    res = run_cli(*argv)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"etr-hub {version('etr-hub')}\n" and res.stderr == ""

"""Bad settings are refused before any model loads, as usage errors naming the flag; a diverged
training writes nothing; a broken registry database or URL is one line saying what to do.
Through the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.helpers import build_labelled, init_world, run_cli

# (argv, the flag the usage error names)
BAD_SETTINGS = [
    (["train-token", "astronomy", "--batch-size", "0"], "'--batch-size'"),
    (["train-token", "astronomy", "--lr", "nan"], "'--lr'"),
    (["train-token", "astronomy", "--lr", "0"], "'--lr'"),
    (["train-token", "astronomy", "--lr", "inf"], "'--lr'"),
    (["train-token", "astronomy", "--weight-decay", "nan"], "'--weight-decay'"),
    (["train-token", "astronomy", "--epochs", "0"], "'--epochs'"),
    (["train-token", "astronomy", "--max-epochs", "0"], "'--max-epochs'"),
    (["train-token", "astronomy", "--seed", "-1"], "'--seed'"),
    (["train-token", "Astro Expert"], "'name'"),
    (["train-token", "astronomy", "--version", "../1.0"], "'--version'"),
    (["query-set", "build", "astronomy", "--expert", "x", "--data", "y.jsonl", "--batch-size", "0"], "'--batch-size'"),
    (["query-set", "build", "astronomy", "--expert", "x", "--data", "y.jsonl", "--tau", "nan"], "'--tau'"),
    (["query-set", "build", "astronomy", "--expert", "x", "--data", "y.jsonl", "--size", "0"], "'--size'"),
    (["query-set", "build", "astronomy", "--expert", "x", "--data", "y.jsonl", "--rule", "vibes"], "'--rule'"),
    (["query-set", "build", "astronomy", "--expert", "x", "--data", "y.jsonl", "--pick", "best"], "'--pick'"),
    (["query-set", "build", "Astro/../x", "--expert", "x", "--data", "y.jsonl"], "'name'"),
    (["chat", "--once", "hi", "--max-new-tokens", "abc"], "'--max-new-tokens'"),
    (["chat", "--once", "hi", "--max-new-tokens", "0"], "'--max-new-tokens'"),
    (["chat", "--once", "hi", "--temperature", "-1"], "'--temperature'"),
    (["chat", "--once", "hi", "--temperature", "nan"], "'--temperature'"),
    (["chat", "--once", "hi", "--top-p", "0"], "'--top-p'"),
    (["chat", "--once", "hi", "--repetition-penalty", "0"], "'--repetition-penalty'"),
    (["chat", "--once", "hi", "--max-prompt-tokens", "0"], "'--max-prompt-tokens'"),
    (["serve", "--max-prompt-tokens", "0"], "'--max-prompt-tokens'"),
    (["query-set", "build", "x", "--expert", "e", "--data", "d.jsonl", "--max-tokens", "1"], "'--max-tokens'"),
    (["chat", "--once", "hi", "--seed", str(2**70)], "'--seed'"),
    (["chat", "--once", "hi", "--memory-budget-mb", "-1"], "'--memory-budget-mb'"),
    (["explain", "hi", "--top", "-1"], "'--top'"),
    (["eval", "mmlu", "--data-dir", ".", "--batch-size", "0"], "'--batch-size'"),
    (["eval", "mmlu", "--data-dir", ".", "--seed", "nan"], "'--seed'"),
    (["serve", "--max-tokens", "0"], "'--max-tokens'"),
    (["serve", "--max-body-kb", "0"], "'--max-body-kb'"),
    (["serve", "--log-level", "loud"], "'--log-level'"),
    (["chat", "--once", "hi", "--min-p", "1.5"], "'--min-p'"),
    (["serve", "--min-p", "-0.1"], "'--min-p'"),
    (["explain", "hi", "--min-p", "nan"], "'--min-p'"),
]


def test_bad_settings_are_usage_errors_naming_the_flag(world):
    init_world(world)  # a registry with a meta model: without the check, these would go on to load it
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: run_cli(*case[0], timeout=60), BAD_SETTINGS))
    for (argv, flag), res in zip(BAD_SETTINGS, results):
        where = f"etr-hub {' '.join(argv)}: exit {res.returncode}\n{res.stderr}"
        assert res.returncode == 2 and f"Invalid value for {flag}" in res.stderr, where
        assert "internal error" not in res.stderr and "Traceback" not in res.stderr and res.stdout == "", where


def test_bad_settings_are_refused_before_torch_is_imported():
    code = (
        "import json, sys\nimport etr_hub.cli.main as m\ncodes = []\n"
        f"for argv in json.loads({json.dumps(json.dumps([c[0] for c in BAD_SETTINGS]))}):\n"
        "    try:\n        m.app(argv, prog_name='etr-hub')\n"
        "    except SystemExit as e:\n        codes.append(e.code)\n"
        "print(json.dumps([codes, 'torch' in sys.modules]))\n"
    )
    probe = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert json.loads(probe.stdout.strip().splitlines()[-1]) == [[2] * len(BAD_SETTINGS), False], probe.stderr


def _no_bundles_no_experts():
    from etr_hub.config import settings
    from etr_hub.registry import Registry

    bundles = settings().bundles_dir
    return Registry.open().list_experts() == [] and not (bundles.exists() and any(bundles.iterdir()))


def test_diverged_training_says_lower_lr_and_writes_nothing(world):
    init_world(world)
    build_labelled(world, "astronomy")
    res = run_cli("train-token", "astronomy", "--lr", "1e30")
    assert res.returncode == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged at --lr 1e+30") and last.endswith(
        "lower --lr (the paper's is 5e-4)"
    ), res.stderr
    assert "expert.json" not in res.stderr and "Traceback" not in res.stderr
    assert _no_bundles_no_experts()


def test_a_finite_runaway_row_is_refused_too():
    from etr_hub.errors import EtrHubError
    from etr_hub.training.optimize import TrainOutcome, TrainSettings
    from etr_hub.training.train_token import _check_trained

    hidden = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    sane = TrainOutcome(row=torch.randn(1, 16) * 0.1, epochs=1, steps=1, final_loss=0.5, stopped="epochs")
    _check_trained(sane, hidden, TrainSettings())
    runaway = TrainOutcome(row=torch.full((1, 16), 1e6), epochs=1, steps=1, final_loss=0.0, stopped="epochs")
    with pytest.raises(EtrHubError, match=r"training diverged.*lower `lr`"):
        _check_trained(runaway, hidden, TrainSettings(lr=50.0))


@pytest.mark.parametrize("case", ["out-exists", "version-registered"])
def test_train_token_conflicts_are_found_before_training(fake_meta, bundle_factory, tmp_path, case):
    """The registry's meta model here cannot even load (no weights), and no query set exists:
    the conflict is reported first, so it is found before anything slow."""
    if case == "out-exists":
        (tmp_path / "taken").mkdir()
        args, expect = ["--out", str(tmp_path / "taken")], "already exists — pass --replace or choose another --out"
    else:
        assert run_cli("expert", "add", str(bundle_factory("astronomy", version="1.0.0"))).returncode == 0
        args, expect = ["--version", "1.0.0"], "expert 'astronomy' version 1.0.0 is already registered"
    res = run_cli("train-token", "astronomy", *args)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], res.stderr


def _valid_registry_bytes(tmp_path) -> bytes:
    assert (
        run_cli("expert", "list", env={"ETR_HUB_HOME": str(tmp_path / "donor"), "ETR_HUB_DATABASE_URL": ""}).returncode
        == 0
    )
    return (tmp_path / "donor" / "registry.db").read_bytes()


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("random-bytes", "file is not a database"),
        ("truncated", "database disk image is malformed"),
    ],
)
@pytest.mark.parametrize("command", [["expert", "list"], ["expert", "add", "."], ["chat", "--once", "hi"]])
def test_a_corrupted_registry_database_is_one_line(hub_home, tmp_path, damage, reason, command):
    hub_home.mkdir(parents=True, exist_ok=True)
    db = hub_home / "registry.db"
    good = _valid_registry_bytes(tmp_path)
    db.write_bytes(os.urandom(8192) if damage == "random-bytes" else good[: len(good) // 4])
    env = {"ETR_HUB_DATABASE_URL": ""}  # the SQLite file, also when the suite runs on PostgreSQL
    res = run_cli(*command, env=env)
    assert res.returncode == 3, res.stderr
    assert res.stderr == (
        f"error: registry database {db} is not a valid SQLite database ({reason}) — "
        "restore it from a backup or move it away and run `etr-hub init`\n"
    )
    db.rename(hub_home / "registry.db.broken")  # what the message says to do, and then it works
    assert run_cli("expert", "list", env=env).returncode == 0


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize(
    "url, says",
    [
        ("foo", "ETR_HUB_DATABASE_URL 'foo' is not a database URL"),
        ("mysql://etr:s3cret@db.internal/etr", "ETR_HUB_DATABASE_URL names a 'mysql' database"),
        ("etr:s3cret@db.internal", "ETR_HUB_DATABASE_URL is not a database URL"),
        pytest.param(
            "postgresql+pg8000://etr:s3cret@127.0.0.1/etr",
            "ETR_HUB_DATABASE_URL names PostgreSQL but its driver is missing (pg8000)",
            marks=pytest.mark.skipif(_installed("pg8000"), reason="pg8000 is installed here"),
        ),
    ],
)
def test_an_unsupported_database_url_is_one_line(url, says):
    res = run_cli("expert", "list", env={"ETR_HUB_DATABASE_URL": url})
    assert res.returncode == 3 and res.stderr.startswith(f"error: {says}") and res.stderr.count("\n") == 1, res.stderr
    assert "s3cret" not in res.stderr and "postgresql+psycopg://" in res.stderr

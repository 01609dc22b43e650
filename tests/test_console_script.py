"""The real console script in subprocesses: --help speed, concurrency, a killed `add`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from etr_hub.store import sha256_file
from tests.helpers import etr_hub_cmd, make_bundle, run_cli


def test_help_is_fast_and_lists_commands():
    res = run_cli("--help")
    assert res.returncode == 0
    for cmd in ("init", "expert"):
        assert cmd in res.stdout
    # --help must not import the heavy stack
    probe = subprocess.run(
        [
            os.sys.executable,
            "-c",
            "import sys, etr_hub.cli.main as m\n"
            "try:\n    m.app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(','.join(x for x in ('torch','transformers','sqlmodel','peft') if x in sys.modules), "
            "file=sys.stderr)",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.stderr.strip() == "", probe.stderr


def test_expert_help_subcommands():
    res = run_cli("expert", "--help")
    assert res.returncode == 0
    for sub in ("add", "list", "show", "remove", "enable", "disable", "export"):
        assert sub in res.stdout


def test_concurrent_adds_from_several_processes(fake_meta, tmp_path):
    bundles = [make_bundle(tmp_path / f"b{i}", f"expert-{i}", seed=i) for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda b: run_cli("expert", "add", str(b)), bundles))
    for r in results:
        assert r.returncode == 0, r.stderr
        assert "locked" not in r.stderr
    listed = json.loads(run_cli("expert", "list", "--json").stdout)
    assert sorted(r["name"] for r in listed) == [f"expert-{i}" for i in range(6)]


def _start_add(bundle: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*etr_hub_cmd(), "expert", "add", str(bundle)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _kill_once_copied(bundle: Path, token_file: Path) -> None:
    """SIGKILL `expert add` the moment its token file lands in the store: after the first copy,
    (almost always) before the commit, while the adapter and query set are still being copied."""
    proc = _start_add(bundle)
    deadline = time.monotonic() + 120
    while not token_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_add_leaves_no_half_registered_expert(fake_meta, tmp_path, hub_home, registry):
    """SIGKILL `expert add` mid-way (between its copies into the store and its commit) and at
    staggered moments: each expert is either fully registered or absent, and adds cleanly again."""
    bundles, mid_way = [], []
    for i in range(3):  # killed as the store fills: at least one of these must land before the commit
        bundle = make_bundle(tmp_path / f"m{i}", f"killed-{i}", seed=100 + i, adapter=True)
        token_file = registry.store.file_path(_token_sha256(bundle), ".safetensors")
        _kill_once_copied(bundle, token_file)
        if token_file.exists() and f"killed-{i}" not in {row.name for row in registry.list_experts()}:
            mid_way.append(i)  # its token is copied, no row records it: killed between copy and commit
        bundles.append(bundle)
    assert mid_way, "no kill landed between the copies and the commit: the property went unchecked"
    for i, delay in enumerate([0.05, 0.4, 0.9, 1.3], start=3):  # and at whatever moment these land
        bundles.append(make_bundle(tmp_path / f"k{i}", f"killed-{i}", seed=100 + i, adapter=True))
        proc = _start_add(bundles[-1])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    survived = {row.name for row in registry.list_experts()}
    assert not survived & {f"killed-{i}" for i in mid_way}
    # Adding each bundle again, uninterrupted, must agree with what the kills left: an expert that is
    # there is "already registered" (so it was complete), one that is not registers cleanly now.
    for i, bundle in enumerate(bundles):
        res = run_cli("expert", "add", str(bundle))
        assert res.returncode == 0, res.stderr
        assert ("already registered" in res.stdout + res.stderr) == (f"killed-{i}" in survived), (
            res.stdout,
            res.stderr,
            survived,
        )
    assert sorted(row.name for row in registry.list_experts()) == [f"killed-{i}" for i in range(len(bundles))]
    for row in registry.list_experts():
        assert registry.abspath(row.token_path).is_file()
        assert registry.abspath(row.adapter_path).is_dir()
        assert sha256_file(registry.abspath(row.token_path)) == row.token_sha256
    # and no temporary leftovers under final names: every stored file matches its address
    for p in (hub_home / "store" / "sha256").rglob("*"):
        if p.is_file() and not p.name.startswith(".tmp-"):
            assert sha256_file(p) == p.name.split(".")[0]


def _token_sha256(bundle: Path) -> str:
    return json.loads((bundle / "expert.json").read_text())["token"]["sha256"]


def test_error_is_one_line_without_traceback(tmp_path):
    res = run_cli("expert", "add", str(tmp_path / "nope"))
    assert res.returncode != 0
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error: ")
    assert "Traceback" not in res.stderr

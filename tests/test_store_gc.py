"""The store leaks nothing (issue #15, item 6): a killed `expert add`, `--replace`, `remove`
and orphaned files are cleaned up, and a concurrent writer's temporary is never touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from etr_hub.store import GRACE_S, Store
from tests.helpers import etr_hub_cmd, invoke, make_bundle, run_cli
from tests.test_bundle_safety import list_json, store_files


def unreferenced(registry) -> list[str]:
    """Store entries (files, adapter trees) that no registry row points at."""
    from sqlmodel import select

    from etr_hub.registry.tables import QuerySet

    live = {p for e in registry.list_experts() for p in (e.token_path, e.adapter_path, e.model_card_path) if p}
    with registry.session() as s:
        live |= {q.store_path for q in s.exec(select(QuerySet))}
    root = registry.store.root
    entries = [p for p in root.glob("sha256/*/*")] + [p for p in root.glob("trees/*")]
    return sorted(p.relative_to(root).as_posix() for p in entries if p.relative_to(root).as_posix() not in live)


def temporaries(home: Path) -> list[str]:
    store = home / "store"
    return sorted(
        p.relative_to(store).as_posix() for p in [*store.glob("trees/.tmp-*"), *store.glob("sha256/*/.tmp-*")]
    )


def test_kill_9_during_expert_add_leaves_nothing_after_the_next_open_and_gc(fake_meta, tmp_path, hub_home):
    assert (
        invoke("expert", "add", str(make_bundle(tmp_path / "keep", "prehistory", seed=9, adapter=True))).returncode == 0
    )
    before_rows, before_store = list_json(), store_files(hub_home)

    bundle = make_bundle(tmp_path / "big", "astronomy", adapter=True, seed=1)
    block = os.urandom(1 << 20)
    with open(bundle / "adapter" / "big.safetensors", "wb") as f:  # 256 MB: the copy takes a while
        for _ in range(256):
            f.write(block)
    with subprocess.Popen(  # `with`: its stderr pipe is closed however the test ends
        [*etr_hub_cmd(), "expert", "add", str(bundle)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as proc:
        deadline = time.monotonic() + 180
        partial = None
        while partial is None:
            assert proc.poll() is None, f"expert add ended before it was killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no copy into the store started"
            found = (
                [p for p in (hub_home / "store" / "trees").glob(".tmp-*/big.safetensors")]
                if (hub_home / "store" / "trees").is_dir()
                else []
            )
            partial = found[0] if found else None
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert temporaries(hub_home), "the kill came after the copy finished"

    res = run_cli("expert", "list", "--json")  # the next store open sweeps the dead writer's temporaries
    assert res.returncode == 0 and json.loads(res.stdout) == before_rows
    assert temporaries(hub_home) == []
    res = run_cli("store", "gc", "--json")  # and gc deletes what it copied but never recorded
    assert res.returncode == 0, res.stderr
    assert all("prehistory" not in r for r in json.loads(res.stdout)["removed"])
    assert store_files(hub_home) == before_store and list_json() == before_rows


LIVE_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from etr_hub.store import Store
    store = Store(Path(sys.argv[1]))
    with store._temp(store.root / "trees", directory=True) as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(b"partial")
        print(tmp, flush=True)
        time.sleep(600)
""")


def test_opening_the_store_spares_a_live_writers_temporary_and_sweeps_it_once_it_dies(tmp_path):
    root = tmp_path / "store"
    with subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(root)], stdout=subprocess.PIPE, text=True) as writer:
        try:
            tmp = Path(writer.stdout.readline().strip())
            assert tmp.is_dir()
            assert Store(root).swept == [] and tmp.is_dir()  # another process opens the store: the copy goes on
        finally:
            writer.kill()
    assert Store(root).swept == [tmp.relative_to(root).as_posix()]
    assert sorted(p.name for p in (root / "trees").iterdir()) == []  # its lock file went too


def test_a_temporary_without_a_lock_is_kept_for_the_grace_period(tmp_path):
    old, young = tmp_path / "store" / "sha256" / "ab" / ".tmp-old", tmp_path / "store" / "trees" / ".tmp-young"
    for p in (old, young):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
    past = time.time() - GRACE_S - 60
    os.utime(old, (past, past))
    assert Store(tmp_path / "store").swept == ["sha256/ab/.tmp-old"]
    assert young.exists() and not old.exists()


def test_replace_remove_and_gc_leave_no_unreferenced_file(fake_meta, registry, tmp_path):
    a = make_bundle(tmp_path / "a", "astronomy", seed=1, adapter=True)
    assert invoke("expert", "add", str(a)).returncode == 0
    b = make_bundle(tmp_path / "b", "astronomy", seed=2, adapter=True)
    (b / "adapter" / "extra.safetensors").write_bytes(
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
    )  # another adapter tree
    assert invoke("expert", "add", str(b), "--replace").returncode == 0
    assert unreferenced(registry) == []  # the replaced version's token, tree and card are gone

    orphan = registry.store.root / "sha256" / "ff" / ("f" * 64 + ".safetensors")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by an older etr-hub")
    dry = invoke("store", "gc", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {
        "removed": [orphan.relative_to(registry.store.root).as_posix()],
        "temporaries": [],
        "bytes": orphan.stat().st_size,
        "dry_run": True,
    }
    assert orphan.exists()
    human = invoke("store", "gc")
    assert human.returncode == 0 and "deleted 1 unreferenced entry" in human.stderr and not orphan.exists()
    assert unreferenced(registry) == [] and len(list_json()) == 1

    assert invoke("expert", "add", str(make_bundle(tmp_path / "p", "prehistory", seed=3))).returncode == 0
    assert invoke("expert", "remove", "astronomy", "--yes").returncode == 0
    assert unreferenced(registry) == []
    assert [r["name"] for r in list_json()] == ["prehistory"]
    assert json.loads(invoke("store", "gc", "--json").stdout)["removed"] == []


@pytest.mark.parametrize("dry_run", [True, False])
def test_gc_on_an_empty_home_is_a_no_op(hub_home, dry_run):
    res = invoke("store", "gc", "--json", *(["--dry-run"] if dry_run else []))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"removed": [], "temporaries": [], "bytes": 0, "dry_run": dry_run}

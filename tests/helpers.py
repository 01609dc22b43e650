"""Helpers the tests share: bundles with tiny random tensors, and the CLI run in a subprocess or in-process.

Fixtures live in conftest.py; anything a test imports lives here (`from tests.helpers import …`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

FAKE_FP = "a" * 64  # a meta fingerprint for tests that need no real model
HIDDEN = 16


def dispose_engine(url: str) -> None:
    """Close the pooled connections of a registry URL (engines are cached per URL)."""
    from etr_hub.registry.db import engine_for

    engine_for(url).dispose()
    engine_for.cache_clear()


def write_manifest(root: Path, manifest: dict) -> None:
    (root / "expert.json").write_text(json.dumps(manifest, indent=2))


def make_bundle(
    root: Path,
    name: str = "astronomy",
    *,
    hidden: int = HIDDEN,
    fingerprint: str = FAKE_FP,
    seed: int = 0,
    query_set: bool = True,
    adapter: bool = False,
    version: str = "0.1.0",
) -> Path:
    """A complete, valid bundle with tiny random tensors."""
    import torch
    from safetensors.torch import save_file

    from etr_hub.store import sha256_file

    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    save_file({"expert_token": torch.randn(1, hidden, generator=g)}, str(root / "token.safetensors"))
    manifest = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "description": f"{name} expert",
        "license": "Apache-2.0",
        "provider": "tests",
        "label": name,
        "expert": {"kind": "peft", "path": "adapter"} if adapter else {"kind": "local", "path": "/models/expert"},
        "meta": {"reference": "tiny-test-meta", "hidden_size": hidden, "vocab_size": 100, "fingerprint": fingerprint},
        "token": {
            "file": "token.safetensors",
            "sha256": sha256_file(root / "token.safetensors"),
            "shape": [1, hidden],
            "dtype": "float32",
        },
    }
    if query_set:
        rng = random.Random(seed)
        rows = [{"query": f"question {rng.random():.6f} about {name}", "response": "answer"} for _ in range(5)]
        (root / "query_set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        manifest["query_set"] = {
            "file": "query_set.jsonl",
            "sha256": sha256_file(root / "query_set.jsonl"),
            "size": 5,
            "tau": 0.5,
            "seed": seed,
        }
    if adapter:
        (root / "adapter").mkdir()
        (root / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
        save_file({"lora_A": torch.randn(2, hidden, generator=g)}, str(root / "adapter" / "adapter_model.safetensors"))
    (root / "README.md").write_text(f"# {name}\n")
    manifest["model_card"] = "README.md"
    write_manifest(root, manifest)
    return root


def etr_hub_cmd() -> list[str]:
    """The installed console script (falls back to the module when run from a checkout)."""
    exe = shutil.which("etr-hub", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "etr_hub.cli.main"]


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*etr_hub_cmd(), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        input=input,
    )


def invoke(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in-process (fast: torch stays imported); same shape as run_cli's result.

    Subprocess tests of the real console script live beside it; this one is for tables of cases.
    """
    from typer.testing import CliRunner

    from etr_hub.cli.main import app

    result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def init_world(world) -> None:
    r = invoke("init", "--meta", str(world["meta"]))
    assert r.returncode == 0, r.stderr


def build_labelled(world, name: str) -> None:
    r = invoke(
        "query-set",
        "build",
        name,
        "--expert",
        str(world[f"expert:{name}"]),
        "--data",
        str(world["data"]),
        "--rule",
        "labelled",
        "--label",
        name,
        "--size",
        "20",
    )
    assert r.returncode == 0, r.stderr

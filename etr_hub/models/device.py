"""Where models run: the device and the floating-point precision, chosen once, before any model loads.

`device` is auto | cpu | cuda | cuda:N | mps and `dtype` auto | float32 | bfloat16 | float16 (the CLI's
--device / --dtype, else ETR_HUB_DEVICE / ETR_HUB_DTYPE, else auto). Two pure functions decide:

    resolve_device("auto", seen)          cuda when torch sees a GPU, else mps when it sees one, else cpu
    resolve_dtype("auto", device, model)  float32 on the CPU; on a GPU the model's own (its config's dtype)

The meta model goes there, and whatever computes with it follows it (models/loading.py, session.py,
runtime/hub.py): local and LoRA experts, W_E, the KV caches, the batched passes of query-set build,
train-token and eval. The meta fingerprint does not depend on either (models/fingerprint.py).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from etr_hub.config import DEVICE, DTYPE, settings
from etr_hub.errors import ModelLoadError

DTYPES = ("float32", "bfloat16", "float16")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
DTYPE_CHOICES = "auto, float32, bfloat16 or float16"

_DEVICE = re.compile(r"(auto|cpu|mps|cuda)(:\d+)?")


def parse_device(text: str) -> str | None:
    """`text` as a device name (auto, cpu, cuda, cuda:N, mps), or None when it names none."""
    match = _DEVICE.fullmatch(text.strip().lower())
    if match is None or (match.group(2) and match.group(1) != "cuda"):
        return None
    kind, index = match.groups()
    return kind + (f":{int(index[1:])}" if index else "")


def parse_dtype(text: str) -> str | None:
    """`text` as a dtype name (auto, float32, bfloat16, float16), or None when it names none."""
    name = text.strip().lower()
    return name if name in ("auto", *DTYPES) else None


@dataclass(frozen=True)
class Accelerators:
    """What torch sees on this machine."""

    cuda: int = 0  # CUDA GPUs
    mps: bool = False  # an Apple GPU


def resolve_device(requested: str, seen: Accelerators, *, said: str | None = None) -> str:
    """A parsed device name as the device models go to; a ModelLoadError when this machine has none
    such (`said`: how the user wrote it, for the message; default `device=…`)."""
    said = said or f"`device={requested}`"
    if requested == "auto":
        return "cuda" if seen.cuda else "mps" if seen.mps else "cpu"
    kind, _, index = requested.partition(":")
    if kind == "cuda" and not seen.cuda:
        raise ModelLoadError(
            f"{said}: torch sees no CUDA GPU here", "use `device=cpu` (or auto), or a CUDA build of torch on a GPU"
        )
    if kind == "cuda" and index and int(index) >= seen.cuda:
        raise ModelLoadError(
            f"{said}: torch sees {seen.cuda} CUDA GPU(s), cuda:0 to cuda:{seen.cuda - 1}",
            f"use `device=cuda:{seen.cuda - 1}` or lower (or check CUDA_VISIBLE_DEVICES)",
        )
    if kind == "mps" and not seen.mps:
        raise ModelLoadError(f"{said}: torch sees no Apple GPU (MPS) here", "use `device=cpu` (or auto)")
    return requested


def resolve_dtype(
    requested: str, device: str, model_dtype: str | None, runs: Collection[str] = DTYPES, *, said: str | None = None
) -> str:
    """A parsed dtype name as the dtype models load in. auto: float32 on the CPU; on a GPU
    `model_dtype` (the model's config), or float32 where it names none or one the device cannot run.
    `runs`: the dtypes `device` runs; asking for another is a ModelLoadError."""
    if requested == "auto":
        return model_dtype if device != "cpu" and model_dtype is not None and model_dtype in runs else "float32"
    if requested not in runs:
        said = said or f"`dtype={requested}`"
        raise ModelLoadError(
            f"{said} does not run on {device} here (it runs {', '.join(runs)})", "use `dtype=float32` (or auto)"
        )
    return requested


def accelerators() -> Accelerators:
    import torch

    mps = getattr(torch.backends, "mps", None)
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Accelerators(cuda=cuda, mps=bool(mps is not None and mps.is_available()))


def runnable_dtypes(device: str) -> tuple[str, ...]:
    """The dtypes `device` runs a small matmul, softmax and RMS norm in (float32 always)."""
    import torch

    runs = ["float32"]
    for name in DTYPES[1:]:
        try:
            x = torch.full((4, 8), 0.5, dtype=getattr(torch, name), device=device)  # (4, 8)
            y = torch.softmax(x @ x.T, dim=-1) * torch.rsqrt(x.pow(2).mean(-1, keepdim=True))  # (4, 4)
            if bool(torch.isfinite(y).all()) and abs(float(y.sum()) - 8.0) < 0.1:  # 16 x 0.25 x 2
                runs.append(name)
        except (RuntimeError, TypeError, NotImplementedError):
            continue
    return tuple(runs)


@dataclass(frozen=True)
class Placement:
    """Where models load: a device this machine has, and a dtype it runs there (auto: settled per
    model by `dtype_for`, from the model's config)."""

    device: str
    dtype: str
    runs: tuple[str, ...] = DTYPES

    def dtype_for(self, model_dtype: str | None) -> str:
        return resolve_dtype(self.dtype, self.device, model_dtype, self.runs)


def placement(device: str | None = None, dtype: str | None = None) -> Placement:
    """`device` and `dtype` (None: ETR_HUB_DEVICE / ETR_HUB_DTYPE, else auto) checked against what
    torch sees here, before any model loads: a ModelLoadError names what this machine lacks."""
    cfg = settings()
    dev_text, dev_said = (cfg.device, f"{DEVICE}={cfg.device}") if device is None else (device, f"`device={device}`")
    dt_text, dt_said = (cfg.dtype, f"{DTYPE}={cfg.dtype}") if dtype is None else (dtype, f"`dtype={dtype}`")
    dev = parse_device(dev_text)
    if dev is None:
        raise ModelLoadError(f"{dev_said} is not a device", f"use {DEVICE_CHOICES}")
    dt = parse_dtype(dt_text)
    if dt is None:
        raise ModelLoadError(f"{dt_said} is not a dtype", f"use {DTYPE_CHOICES}")
    dev = resolve_device(dev, accelerators(), said=dev_said)
    runs = runnable_dtypes(dev)
    resolve_dtype(dt, dev, None, runs, said=dt_said)  # an explicit dtype the device cannot run: refused now
    return Placement(dev, dt, runs)


def placement_of(model: Any) -> tuple[str, str]:
    """(device, dtype) a loaded model computes in: its input embedding's."""
    weight = model.get_input_embeddings().weight
    return str(weight.device), str(weight.dtype).removeprefix("torch.")

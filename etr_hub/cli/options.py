"""Options several commands share, as `Annotated` aliases (Typer's idiom): one definition each.

    def chat(json_out: JsonOption = False, memory_budget_mb: MemoryBudgetOption = None): ...

Where a command words an option's help its own way, `json_option(help)` / `seed_option(help)`
build the same option with that text. Fixed choices are `StrEnum`s in the command's module, so
`--help` lists them and a value outside them is a usage error (exit 2).

`--device` / `--dtype` (DeviceOption, DtypeOption) are on every command that loads models; their
default None lets the library read ETR_HUB_DEVICE / ETR_HUB_DTYPE (models/device.py).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from etr_hub.cli import checks


def json_option(help: str = "Print one JSON object.") -> Any:
    return typer.Option("--json", help=help)


def manifest_option(field: str, help: str | None = None) -> Any:
    """`--FIELD`, a value checked by the bundle manifest's own schema before anything loads."""
    return typer.Option("--" + field, callback=checks.manifest_field(field), help=help)


def map_option(what: str) -> Any:
    return typer.Option("--map", help=f"{what}=EXPERT, overriding the experts' manifest labels (repeatable).")


def plot_option(what: str) -> Any:
    return typer.Option("--plot", help=f"Write the routing confusion heat map and per-{what} accuracy as a PNG.")


def seed_option(help: str | None = None) -> Any:
    return typer.Option("--seed", callback=checks.seed, help=help)


JsonOption = Annotated[bool, json_option()]
SeedOption = Annotated[int, seed_option()]


class Dtype(StrEnum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


DeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device",
        callback=checks.device,
        help="Where models run: auto (a GPU when torch sees one), cpu, cuda, cuda:N or mps "
        "(default: $ETR_HUB_DEVICE, else auto).",
    ),
]
DtypeOption = Annotated[
    Dtype | None,
    typer.Option(
        "--dtype",
        help="Precision of the models: auto (float32 on the CPU, the model's own on a GPU) or one of these "
        "(default: $ETR_HUB_DTYPE, else auto).",
    ),
]
MemoryBudgetOption = Annotated[
    int | None, typer.Option("--memory-budget-mb", min=0, help="Memory for loaded experts (default: half the RAM).")
]
MinPOption = Annotated[
    float | None,
    typer.Option(
        "--min-p",
        min=0.0,
        max=1.0,
        metavar="P",
        help="An expert token needs probability ≥ P to take over (default: the registry's, set by "
        "`etr-hub expert tune --min-p`).",
    ),
]

"""Option callbacks that refuse bad values while parsing, before any model loads.

A refused value is a usage error (exit 2) that names the flag: "Invalid value for '--lr': …".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import typer


def number(*, gt: float | None = None, ge: float | None = None, le: float | None = None) -> Callable[[Any], Any]:
    """A finite number within bounds (None, an option's "not given", passes)."""
    parts = [
        f"> {gt}" if gt is not None else "",
        f"≥ {ge}" if ge is not None else "",
        f"≤ {le}" if le is not None else "",
    ]
    wanted = " and ".join(p for p in parts if p)

    def check(value):
        if value is None:
            return value
        ok = (
            math.isfinite(value)
            and (gt is None or value > gt)
            and (ge is None or value >= ge)
            and (le is None or value <= le)
        )
        if not ok:
            raise typer.BadParameter(f"must be a finite number{' ' + wanted if wanted else ''} (got {value})")
        return value

    return check


# Seeds go to torch.Generator, random.Random and numpy, whose common range is 0 … 2**32 - 1.
seed = number(ge=0, le=2**32 - 1)


def device(value: str | None) -> str | None:
    """A device name (auto, cpu, cuda, cuda:N, mps); whether this machine has it is checked when models load."""
    if value is None:
        return value
    from etr_hub.models.device import DEVICE_CHOICES, parse_device

    parsed = parse_device(value)
    if parsed is None:
        raise typer.BadParameter(f"{value!r} is not a device: use {DEVICE_CHOICES}")
    return parsed


def manifest_field(field: str) -> Callable[[Any], Any]:
    """A value the bundle manifest's `field` accepts (name, version, …), checked by the manifest's own schema."""

    def check(value):
        if value is None:
            return value
        from typing import Annotated

        from pydantic import TypeAdapter, ValidationError

        from etr_hub.bundle.manifest import Manifest

        info = Manifest.model_fields[field]
        try:
            TypeAdapter(
                Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
            ).validate_python(value)
        except ValidationError as exc:
            hint = " (lowercase letters, digits, _ and -, starting with a letter or digit)" if field == "name" else ""
            raise typer.BadParameter(
                f"{value!r} is not a valid expert {field}: {exc.errors()[0]['msg']}{hint}"
            ) from None
        return value

    return check


def as_usage_error(check: Callable[[], Any]) -> Any:
    """Run a library check of the flags together: an EtrHubError from it is a usage error (one line
    on stderr with the flags' names, exit 2), before the registry opens or a model loads."""
    import sys

    from etr_hub.cli.flags import as_flags
    from etr_hub.errors import EtrHubError

    try:
        return check()
    except EtrHubError as e:
        print(f"error: {as_flags(str(e))}", file=sys.stderr)
        raise typer.Exit(2) from None

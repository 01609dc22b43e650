"""`etr-hub init`: create the home and the registry, prepare and register the meta model."""

from __future__ import annotations

from typing import Annotated

import typer

from etr_hub.cli.common import open_registry
from etr_hub.cli.options import json_option
from etr_hub.cli.output import err, lit, note, print_json, safe

Meta = Annotated[
    str | None,
    typer.Option(
        "--meta",
        help=(
            "Meta model reference: a local model dir, a .gguf file, hf:ORG/NAME@REVISION, or "
            "embedded:smollm2-135m-instruct (default)."
        ),
    ),
]


def init(
    meta: Meta = None,
    json_out: Annotated[bool, json_option("Print the registered meta model as JSON.")] = False,
) -> None:
    """Create $ETR_HUB_HOME and the registry, and register the meta model (idempotent)."""
    from etr_hub.models.refs import ModelRef
    from etr_hub.registry.meta import DEFAULT_META, register_meta_model

    reg = open_registry()
    current = reg.active_meta()
    ref = ModelRef.parse(meta or DEFAULT_META)
    if current is not None and meta is None and current.max_row_norm is None:
        ref = ModelRef.model_validate(current.reference)  # a registry from before row norms were recorded: record them
    if current is not None and meta is None and current.max_row_norm is not None:
        row = current  # already initialised: keep the active meta model
    else:
        with err.status("preparing the meta model…") as status:
            row = register_meta_model(reg, ref, status=lambda msg: status.update(safe(msg)))
    if json_out:
        print_json(
            {
                "home": str(reg.settings.home),
                "meta_model": row.display,
                "fingerprint": row.fingerprint,
                "hidden_size": row.hidden_size,
                "vocab_size": row.vocab_size,
            }
        )
        return
    note(f"home: {reg.settings.home}")
    err.print(
        f"meta model [bold]{lit(row.display)}[/bold]  hidden {row.hidden_size}  vocab {row.vocab_size}  fingerprint "
        f"{row.fingerprint[:12]}…",
        highlight=False,
    )

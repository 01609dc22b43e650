"""`etr-hub export meta OUT`: the meta model with its expert tokens as a Hugging Face checkpoint for an engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from etr_hub.cli.options import JsonOption
from etr_hub.cli.output import err, note, print_json, safe, warn

app = typer.Typer(no_args_is_help=True)


@app.command("meta")
def meta(
    out: Annotated[Path, typer.Argument(help="Folder to write the checkpoint to (new, or empty unless --force).")],
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists and is not empty.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Write the meta model with one added token per enabled expert (`<|expert:NAME|>`, LM head [W_V; W_E]),
    its tokenizer, chat template and generation config, and etr_hub_export.json: a checkpoint that vLLM,
    SGLang, TGI or `transformers serve` can serve for `etr-hub serve --meta-url`. Re-export when experts change."""
    from etr_hub.cli.common import open_registry
    from etr_hub.runtime.export import check_out, export_meta

    check_out(out.expanduser().absolute(), force)  # before the meta model loads
    with err.status("loading the meta model…") as status:
        result = export_meta(out, registry=open_registry(), force=force, status=lambda m: status.update(safe(f"{m}…")))
    for name, reason in result.skipped:
        warn(f"skipped expert '{name}': {reason}")
    if json_out:
        print_json(result.to_json())
        return
    for t in result.tokens:
        err.print(safe(f"  {t.token}  id {t.token_id}  {t.name} {t.version}"), highlight=False)
    err.print(safe(f"wrote {result.out} ({len(result.tokens)} expert token(s))"), highlight=False)
    note("re-export when experts are added, removed, enabled, disabled or retrained")

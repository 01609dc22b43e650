"""`etr-hub store …`: the content-addressed store under $ETR_HUB_HOME/store."""

from __future__ import annotations

from typing import Annotated

import typer

from etr_hub.cli.common import open_registry
from etr_hub.cli.options import json_option
from etr_hub.cli.output import err, print_json

app = typer.Typer(no_args_is_help=True)


@app.command("gc")
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
    json_out: Annotated[bool, json_option("Print {removed, temporaries, bytes, dry_run} as JSON.")] = False,
) -> None:
    """Delete stored files no registry row references, and temporaries of killed writes.

    Safe while other commands run: it waits for any `expert add` in progress to commit."""
    report = open_registry().collect_garbage(dry_run=dry_run)
    if json_out:
        print_json(report.to_json())
        return
    verb = "would delete" if dry_run else "deleted"
    for rel in report.removed:
        err.print(f"{verb} {rel}", highlight=False, markup=False)
    err.print(
        f"{verb} {len(report.removed)} unreferenced entr{'y' if len(report.removed) == 1 else 'ies'} "
        f"({report.bytes / 2**20:.1f} MB) and {len(report.temporaries)} abandoned "
        f"temporar{'y' if len(report.temporaries) == 1 else 'ies'}",
        highlight=False,
        markup=False,
    )

"""`etr-hub store …`: the content-addressed store under $ETR_HUB_HOME/store."""

from __future__ import annotations

import typer

from etr_hub.cli.output import err, print_json

app = typer.Typer(no_args_is_help=True)


@app.command("gc")
def gc(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be deleted."),
    json_out: bool = typer.Option(False, "--json", help="Print {removed, temporaries, bytes, dry_run} as JSON."),
) -> None:
    """Delete stored files no registry row references, and temporaries of killed writes.

    Safe while other commands run: it waits for any `expert add` in progress to commit."""
    from etr_hub.registry import Registry

    report = Registry.open().collect_garbage(dry_run=dry_run)
    if json_out:
        print_json(report.to_json())
        return
    verb = "would delete" if dry_run else "deleted"
    for rel in report.removed:
        err.print(f"{verb} {rel}", highlight=False, markup=False)
    err.print(
        f"{verb} {len(report.removed)} unreferenced entr{'y' if len(report.removed) == 1 else 'ies'} "
        f"({report.bytes / 2**20:.1f} MB) and {len(report.temporaries)} abandoned temporar{'y' if len(report.temporaries) == 1 else 'ies'}",
        highlight=False,
        markup=False,
    )

"""`etr-hub expert tune`: make one expert fire more or less (a bias on its routing logit), or set the
hub's minimum switch probability, without touching any bundle."""

from __future__ import annotations

from typing import Annotated

import typer

from etr_hub.cli.checks import as_usage_error
from etr_hub.cli.common import open_registry
from etr_hub.cli.options import JsonOption
from etr_hub.cli.output import err, out, print_json, safe

Name = Annotated[
    str | None, typer.Argument(help="The expert to tune (NAME or NAME@VERSION); omit it to set only --min-p.")
]
Bias = Annotated[
    float | None,
    typer.Option("--bias", metavar="B", help="Add B to its logit at the routing position (negative: fires less)."),
]
TargetRecall = Annotated[
    float | None,
    typer.Option("--target-recall", metavar="R", help="Find the lowest bias that routes R (0-1) of its own query set."),
]
MaxFalseFire = Annotated[
    float | None,
    typer.Option(
        "--max-false-fire",
        metavar="P",
        help="Find the highest bias (not above today's, unless with --target-recall) that fires on at most P (0-1) "
        "of the everyday prompts.",
    ),
]
MinP = Annotated[
    float | None,
    typer.Option(
        "--min-p", metavar="P", help="Hub-wide: an expert token needs probability ≥ P (0-1) to take over (0: off)."
    ),
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what the change would do; write nothing.")]


def tune(
    name: Name = None,
    bias: Bias = None,
    target_recall: TargetRecall = None,
    max_false_fire: MaxFalseFire = None,
    min_p: MinP = None,
    dry_run: DryRun = False,
    json_out: JsonOption = False,
) -> None:
    """Calibrate routing: one expert's bias (by value, or to a target recall or false-fire rate) and/or
    the hub-wide --min-p, stored in the registry. Prints every expert's recall on its own query set
    and false-fire rate on everyday prompts before and after, from the cached routing states, and
    records the tuned expert's admission report again. Takes effect at the next chat/serve start."""
    from etr_hub.eval.calibration import check_request
    from etr_hub.eval.calibration import tune as run_tune

    as_usage_error(lambda: check_request(name, bias, target_recall, max_false_fire, min_p))
    reg = open_registry()
    result = run_tune(
        reg,
        name,
        bias=bias,
        target_recall=target_recall,
        max_false_fire=max_false_fire,
        min_p=min_p,
        dry_run=dry_run,
    )
    for w in result.warnings:
        err.print(safe(f"warning: {w}"), highlight=False)
    if json_out:
        print_json(result.to_json())
        return
    _show(result)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _show(result) -> None:
    from rich.table import Table

    title = "routing before → after" + (" (dry run: nothing written)" if not result.applied else "")
    table = Table(title=title, title_justify="left")
    for col in ("expert", "bias", "queries", "recall", "false fires"):
        table.add_column(col, justify="left" if col == "expert" else "right")
    for b, a in zip(result.before, result.after):
        style = "bold" if b.name == result.name else ""
        table.add_row(
            safe(b.name, style=style),
            _change(f"{b.bias:+.3f}", f"{a.bias:+.3f}"),
            str(b.queries),
            _change(_pct(b.recall), _pct(a.recall)),
            _change(_pct(b.false_fire), _pct(a.false_fire)),
        )
    out.print(table)
    everyday = f"false fires: share of {result.everyday} everyday prompts"
    err.print(f"min_p {_change(f'{result.min_p_before:g}', f'{result.min_p_after:g}')}; {everyday}", highlight=False)
    if result.applied:
        err.print("saved in the registry: restart `etr-hub serve` / `chat` to route with it", highlight=False)


def _change(before: str, after: str) -> str:
    return before if before == after else f"{before} → {after}"

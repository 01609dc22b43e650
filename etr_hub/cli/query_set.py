"""`etr-hub query-set build`: select an expert query set by loss gap (or by label)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from etr_hub.cli.checks import manifest_field, number
from etr_hub.cli.common import open_registry
from etr_hub.cli.options import DeviceOption, DtypeOption, JsonOption, SeedOption, manifest_option
from etr_hub.cli.output import err, lit, note, out, print_json, safe, warn

app = typer.Typer(no_args_is_help=True)


class RuleName(StrEnum):
    paper = "paper"  # loss gap > τ (eq. 3)
    labelled = "labelled"  # the rows labelled --label


class Pick(StrEnum):
    random = "random"  # down-sample with --seed (the paper)
    top = "top"  # the largest gaps


Name = Annotated[
    str,
    typer.Argument(help="The expert's name (the query set is stored under it).", callback=manifest_field("name")),
]
ExpertRef = Annotated[
    str,
    typer.Option("--expert", help="Expert model: a PEFT adapter dir, a model dir, a .gguf file, hf:ORG/NAME@COMMIT."),
]
Data = Annotated[Path, typer.Option("--data", help="JSONL dataset with 'query' and 'response' (optionally 'label').")]
Tau = Annotated[
    float,
    typer.Option(
        "--tau",
        callback=number(),
        help="Keep queries with loss_meta - loss_expert > τ (nats, summed over the response).",
    ),
]
Size = Annotated[
    int, typer.Option("--size", min=1, help="Down-sample the selection to at most this many queries (paper: 100).")
]
Label = Annotated[
    str | None,
    manifest_option("label", "The expert's domain label: reports query-set purity; required by --rule labelled."),
]
LabelField = Annotated[str, typer.Option("--label-field", help="Dataset field holding the label.")]
Rule = Annotated[
    RuleName,
    typer.Option("--rule", help="paper: loss gap > τ (eq. 3); labelled: rows whose label is --label."),
]
Versus = Annotated[
    list[str] | None,
    typer.Option(
        "--versus",
        help=(
            "Also require the expert to beat this model (repeatable): another expert or a style-control adapter, so "
            "the set reflects expertise rather than answer style."
        ),
    ),
]
PickOption = Annotated[
    Pick,
    typer.Option(
        "--pick",
        help="random: down-sample the passing queries with --seed (paper); top: keep the largest gaps.",
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1)]
MaxTokens = Annotated[
    int,
    typer.Option(
        "--max-tokens",
        min=2,
        help=(
            "Longest row scored, in tokens (prompt + response; at most the model's context): longer responses are "
            "cut, rows whose query alone does not fit are skipped and listed."
        ),
    ),
]


@app.command("build")
def build(
    name: Name,
    expert: ExpertRef,
    data: Data,
    tau: Tau = 0.0,
    size: Size = 100,
    seed: SeedOption = 0,
    label: Label = None,
    label_field: LabelField = "label",
    rule: Rule = RuleName.paper,
    versus: Versus = None,
    pick: PickOption = Pick.random,
    batch_size: BatchSize = 8,
    max_tokens: MaxTokens = 1024,
    json_out: JsonOption = False,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
) -> None:
    """Score the dataset with the meta model and the expert; keep where the expert is better."""
    from etr_hub.cli.flags import as_flags
    from etr_hub.cli.progress import bar_factory
    from etr_hub.queryset.build import QuerySetSpec, SelectionRule, build_query_set

    spec = QuerySetSpec(name, expert, data, versus=tuple(versus or ()), batch_size=batch_size, max_tokens=max_tokens)
    selection = SelectionRule(
        rule=rule.value, tau=tau, size=size, seed=seed, pick=pick.value, label=label, label_field=label_field
    )
    reg = open_registry()
    with bar_factory(quiet=json_out) as bars:
        res = build_query_set(
            reg, spec, selection, progress=bars, status=None if json_out else note, device=device, dtype=dtype
        )
    for w in res.warnings:
        warn(as_flags(w))
    if json_out:
        print_json(_summary(name, res))
        return
    _show(name, label, res)


def _summary(name: str, res: Any) -> dict[str, Any]:
    """The --json object (its keys are part of the CLI's interface)."""
    return {
        "name": name,
        "rule": res.rule,
        "selection_rule": res.info["selection_rule"],
        "tau": res.tau,
        "size": len(res.selected),
        "dataset": res.dataset.name,
        "dataset_sha256": res.dataset.sha256,
        "n_pairs": len(res.dataset.rows),
        "sha256": res.info["sha256"],
        "loss_gap": res.gap_stats,
        "tau_table": res.tau_table,
        "purity": res.purity,
        "in_domain_gap": res.in_domain_gap,
        "out_of_domain_gap": res.out_of_domain_gap,
        "max_tokens": res.max_tokens,
        "skipped_lines": res.skipped_lines,
    }


def _show(name: str, label: str | None, res: Any) -> None:
    """The τ table and gap quantiles on stdout; purity when labelled; what to run next on stderr."""
    from rich.table import Table

    table = Table(title=f"loss gap over {len(res.dataset.rows)} pairs (nats): queries passing at each τ")
    table.add_column("τ", justify="right")
    table.add_column("passing", justify="right")
    for row in sorted(res.tau_table, key=lambda r: r["tau"]):
        mark = " ←" if res.tau is not None and row["tau"] == res.tau else ""
        table.add_row(f"{row['tau']:g}", f"{row['passing']}{mark}")
    out.print(table)
    q = res.gap_stats["quantiles"]
    out.print("gap quantiles: " + "  ".join(f"{k} {v:.2f}" for k, v in q.items()), highlight=False)
    if res.purity is not None:
        out_gap = res.out_of_domain_gap if res.out_of_domain_gap is not None else float("nan")
        out.print(
            safe(
                f"purity (label == {label!r}): {res.purity:.0%}; mean gap in-domain {res.in_domain_gap:.2f}, "
                f"out-of-domain {out_gap:.2f}"
            ),
            highlight=False,
        )
    err.print(
        f"query set [bold]{lit(name)}[/bold]: {len(res.selected)} queries ({lit(res.info['selection_rule'])}); next: "
        f"etr-hub train-token {lit(name)}",
        highlight=False,
    )

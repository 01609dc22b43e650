"""`etr-hub query-set build`: select an expert query set by loss gap (or by label)."""

from __future__ import annotations

from pathlib import Path

import typer

from etr_hub.cli.checks import manifest_field, number, one_of
from etr_hub.cli.checks import seed as seed_range
from etr_hub.cli.output import err, lit, note, out, print_json, safe, warn

app = typer.Typer(no_args_is_help=True)


@app.command("build")
def build(
    name: str = typer.Argument(
        ..., help="The expert's name (the query set is stored under it).", callback=manifest_field("name")
    ),
    expert: str = typer.Option(
        ..., "--expert", help="Expert model: a PEFT adapter dir, a model dir, a .gguf file, hf:ORG/NAME@COMMIT."
    ),
    data: Path = typer.Option(..., "--data", help="JSONL dataset with 'query' and 'response' (optionally 'label')."),
    tau: float = typer.Option(
        0.0,
        "--tau",
        callback=number(),
        help="Keep queries with loss_meta - loss_expert > τ (nats, summed over the response).",
    ),
    size: int = typer.Option(
        100, "--size", min=1, help="Down-sample the selection to at most this many queries (paper: 100)."
    ),
    seed: int = typer.Option(0, "--seed", callback=seed_range),
    label: str = typer.Option(
        None,
        "--label",
        callback=manifest_field("label"),
        help="The expert's domain label: reports query-set purity; required by --rule labelled.",
    ),
    label_field: str = typer.Option("label", "--label-field", help="Dataset field holding the label."),
    rule: str = typer.Option(
        "paper",
        "--rule",
        callback=one_of("paper", "labelled"),
        help="paper: loss gap > τ (eq. 3); labelled: rows whose label is --label.",
    ),
    versus: list[str] = typer.Option(
        None,
        "--versus",
        help="Also require the expert to beat this model (repeatable): another expert or a style-control adapter, so the set reflects expertise rather than answer style.",
    ),
    pick: str = typer.Option(
        "random",
        "--pick",
        callback=one_of("random", "top"),
        help="random: down-sample the passing queries with --seed (paper); top: keep the largest gaps.",
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    max_tokens: int = typer.Option(
        1024,
        "--max-tokens",
        min=2,
        help="Longest row scored, in tokens (prompt + response; at most the model's context): longer responses are cut, rows whose query alone does not fit are skipped and listed.",
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Score the dataset with the meta model and the expert; keep where the expert is better."""
    from etr_hub.cli.flags import as_flags
    from etr_hub.cli.progress import bar_factory
    from etr_hub.queryset.build import QuerySetSpec, SelectionRule, build_query_set
    from etr_hub.registry import Registry

    spec = QuerySetSpec(name, expert, data, versus=tuple(versus or ()), batch_size=batch_size, max_tokens=max_tokens)
    selection = SelectionRule(rule=rule, tau=tau, size=size, seed=seed, pick=pick, label=label, label_field=label_field)
    reg = Registry.open()
    with bar_factory(quiet=json_out) as bars:
        res = build_query_set(reg, spec, selection, progress=bars, status=None if json_out else note)
    for w in res.warnings:
        warn(as_flags(w))
    summary = {
        "name": name,
        "rule": res.rule,
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
    if json_out:
        print_json(summary)
        return
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
        out.print(
            safe(
                f"purity (label == {label!r}): {res.purity:.0%}; mean gap in-domain {res.in_domain_gap:.2f}, out-of-domain {res.out_of_domain_gap if res.out_of_domain_gap is not None else float('nan'):.2f}"
            ),
            highlight=False,
        )
    err.print(
        f"query set [bold]{lit(name)}[/bold]: {len(res.selected)} queries ({lit(res.info['selection_rule'])}); next: etr-hub train-token {lit(name)}",
        highlight=False,
    )

"""`etr-hub expert …`: add, list, show, enable, disable, remove and export bundles."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from etr_hub.cli.checks import as_usage_error
from etr_hub.cli.common import open_registry
from etr_hub.cli.options import DeviceOption, DtypeOption, json_option
from etr_hub.cli.output import err, lit, out, print_json, safe, short

app = typer.Typer(no_args_is_help=True)


def _summary(row) -> dict:
    m = row.manifest
    return {
        "name": row.name,
        "version": row.version,
        "enabled": row.enabled,
        "label": row.label,
        "description": row.description,
        "expert": _redacted(row.expert_ref),
        "allowed_env": list(row.allowed_env or []),
        "source": row.source,
        "meta_fingerprint": row.meta_fingerprint,
        "token_sha256": row.token_sha256,
        "tau": row.tau,
        "bias": row.bias,
        "query_set_size": (m.get("query_set") or {}).get("size"),
        "created_at": row.created_at.isoformat(),
    }


def _redacted(ref: dict) -> dict:
    from etr_hub.models.refs import redact_ref

    return redact_ref(ref)  # never print a credential an older registry row may hold in its URL


def _ref_text(ref: dict) -> str:
    from pydantic import ValidationError

    from etr_hub.models.refs import ModelRef

    ref = _redacted(ref)
    try:
        return ModelRef.model_validate(ref).display()
    except ValidationError:  # a row from before a rule it now breaks: show it, redacted, anyway
        return f"{ref.get('kind')}:{ref.get('url') or ref.get('path') or ref.get('name') or '?'} (invalid now)"


def _source_text(source: str | None) -> str:
    """hf:ORG/REPO@COMMIT with the commit shortened (the full one is in `show` and --json); '-' for a folder."""
    if not source:
        return "-"
    repo, _, commit = source.rpartition("@")
    return f"{repo}@{short(commit)}" if repo else source


def _check_add_options(
    allow_env: list[str] | None,
    max_bundle_mb: float | None,
    max_steal: float | None = None,
    max_false_fire: float | None = None,
    no_report: bool = False,
    check_only: bool = False,
) -> list[str]:
    """Usage errors (exit 2, one line) before the registry opens or anything is read."""
    from etr_hub.errors import EtrHubError
    from etr_hub.eval.admission import check_rate
    from etr_hub.registry.env_names import check_env_names

    def check() -> list[str]:
        check_rate("max_steal", max_steal)
        check_rate("max_false_fire", max_false_fire)
        if no_report and (check_only or max_steal is not None or max_false_fire is not None):
            raise EtrHubError(
                "--no-report skips the admission report that --check-only, --max-steal and --max-false-fire need",
                "drop --no-report, or those options",
            )
        if max_bundle_mb is not None and not 0 < max_bundle_mb < float("inf"):
            raise EtrHubError(
                f"--max-bundle-mb must be a positive number of MB (got {max_bundle_mb:g})",
                "pass e.g. --max-bundle-mb 4096",
            )
        return check_env_names(allow_env)

    return as_usage_error(check)


Sources = Annotated[
    list[str],
    typer.Argument(
        help="Bundle directories (each holds expert.json), e.g. plugins/*/, or hf:ORG/REPO@COMMIT (a bundle repository "
        "on the Hugging Face Hub, from its local cache unless ETR_HUB_ALLOW_DOWNLOAD=1).",
        metavar="BUNDLE...",
    ),
]
AllowEnv = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-env",
        metavar="NAME",
        help=(
            "Let the bundle's remote expert send this environment variable as its API key (repeatable; never "
            "ETR_HUB_*)."
        ),
    ),
]
MaxBundleMb = Annotated[
    float | None,
    typer.Option("--max-bundle-mb", help="Largest bundle accepted, in MB (default: $ETR_HUB_MAX_BUNDLE_MB or 2048)."),
]
Ref = Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")]


CheckOnly = Annotated[
    bool, typer.Option("--check-only", help="Print the admission report and register nothing (exit 2 over a limit).")
]
MaxSteal = Annotated[
    float | None,
    typer.Option(
        "--max-steal", metavar="P", help="Refuse a bundle that would take over P (0-1) of any expert's queries."
    ),
]
MaxFalseFire = Annotated[
    float | None,
    typer.Option(
        "--max-false-fire", metavar="P", help="Refuse a bundle that would fire on over P (0-1) of everyday prompts."
    ),
]
NoReport = Annotated[
    bool,
    typer.Option(
        "--no-report",
        help="Register without the admission report (no meta model, no limits; the default with "
        "ETR_HUB_ADMISSION_REPORT=0).",
    ),
]


@app.command("add")
def add(
    sources: Sources,
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite an expert with the same name and version.")
    ] = False,
    allow_env: AllowEnv = None,
    max_bundle_mb: MaxBundleMb = None,
    check_only: CheckOnly = False,
    max_steal: MaxSteal = None,
    max_false_fire: MaxFalseFire = None,
    no_report: NoReport = False,
    json_out: Annotated[
        bool, json_option('Print the registered expert as JSON, its report as "admission" (an array for several).')
    ] = False,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
) -> None:
    """Validate bundles, report what each new token does at the routing position, and register them.

    The admission report (before anything is written): the new token's recall on its own query set,
    the share of each enabled expert's queries it would take, their recall before and after, and its
    false-fire rate on everyday prompts. Adding a bundle that is already registered, unchanged, does
    nothing, so this is safe to re-run."""
    allowed = _check_add_options(allow_env, max_bundle_mb, max_steal, max_false_fire, no_report, check_only)
    reg = open_registry()
    on = {"device": device, "dtype": dtype}  # where the admission report's meta-model pass runs
    added = [
        _add_one(
            reg, s, replace, allowed, max_bundle_mb, check_only, max_steal, max_false_fire, no_report, json_out, on
        )
        for s in sources
    ]
    if json_out:
        print_json(added[0] if len(added) == 1 else added)


def _add_one(
    reg, source, replace, allowed, max_bundle_mb, check_only, max_steal, max_false_fire, no_report, json_out, report_on
):
    from etr_hub.eval.admission import AdmissionRefused, add_with_report

    options = {"replace": replace, "allow_env": allowed, "max_bundle_mb": max_bundle_mb}
    target = source if source.startswith("hf:") else Path(source)
    before = {(e.name, e.version, e.token_sha256) for e in reg.list_experts()}
    asked = check_only or max_steal is not None or max_false_fire is not None
    if no_report or not (asked or reg.settings.admission_report):
        row, report = reg.add_expert(target, **options), None
    else:
        try:
            row, report = add_with_report(
                reg,
                target,
                check_only=check_only,
                max_steal=max_steal,
                max_false_fire=max_false_fire,
                **report_on,
                **options,
            )
        except AdmissionRefused as refused:
            r = refused.report.to_json()
            if json_out:  # what was measured, then the one-line refusal on stderr
                print_json({"name": r["name"], "version": r["version"], "registered": False, "admission": r})
            else:
                _show_report(r)
            raise
        if not json_out:
            _show_report(report.to_json())
    admission = report.to_json() if report else None
    if row is None:  # --check-only
        assert report is not None
        return {"name": report.name, "version": report.version, "registered": False, "admission": admission}
    if not json_out:
        again = (row.name, row.version, row.token_sha256) in before and not replace
        verb = "already registered" if again else "registered"
        err.print(
            f"{verb} [bold]{lit(row.name)}[/bold] {lit(row.version)} (token {lit(short(row.token_sha256))})",
            highlight=False,
        )
    return {**_summary(row), "registered": True, **({"admission": admission} if admission else {})}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _show_report(r: dict, console=err) -> None:
    """The admission report as a short table (`add`: on stderr; with --json, the JSON carries it)."""
    from rich.table import Table

    at = f" at bias {r['bias']:+g}" if r.get("bias") else ""
    at += f", min_p {r['min_p']:g}" if r.get("min_p") else ""
    table = Table(title=safe(f"admission report: {r['name']} {r['version']}{at}"), title_justify="left")
    for col in ("query set", "queries", "new token wins", "recall before", "recall after"):
        table.add_column(col, justify="left" if col == "query set" else "right")
    table.add_row(f"{safe(r['name'])} (its own)", str(r["queries"]), _pct(r["recall"]), "-", "-")
    for e in r["experts"]:
        table.add_row(
            safe(e["name"]), str(e["queries"]), _pct(e["steal"]), _pct(e["recall_before"]), _pct(e["recall_after"])
        )
    table.add_row("everyday prompts", str(r["everyday"]), _pct(r["false_fire"]), "-", "-")
    console.print(table)


Server = Annotated[
    str | None,
    typer.Option(
        "--server",
        metavar="URL",
        help="Show expert health from this running `etr-hub serve` (default: the servers of this ETR_HUB_HOME).",
    ),
]


@app.command("list")
def list_(json_out: Annotated[bool, json_option("Print a JSON array.")] = False, server: Server = None) -> None:
    """List registered experts (with their health where a server of this home is running)."""
    reg = open_registry()
    rows = reg.list_experts()
    health = _health(reg.settings.home, server)
    if json_out:
        print_json([{**_summary(r), "health": health.get(r.name)} for r in rows])
        return
    if not rows:
        err.print("no experts registered — add one with `etr-hub expert add PATH`")
        return
    out.print(_list_table(rows, health))


def _health(home: Path, server: str | None) -> dict[str, dict]:
    """Each remote expert's state from the running server(s) (the first that tracks it); none without one."""
    from etr_hub.server.discovery import expert_health, running_servers

    found: dict[str, dict] = {}
    for url in [server] if server else running_servers(home):
        states = expert_health(url)
        if isinstance(states, str):
            err.print(safe(f"warning: {states}"), highlight=False)
            continue
        for name, state in states.items():
            found.setdefault(name, {**state, "server": url})
    return found


def _health_text(state: dict | None) -> str:
    if state is None:
        return "-"
    if state.get("state") == "ok":
        return "ok"
    return f"cooling down {state.get('seconds_left', '?')} s: {state.get('reason', '?')}"


def _list_table(rows, health: dict[str, dict]):
    from rich.table import Table

    table = Table(title="experts")
    optional = {
        "bias": any(r.bias for r in rows),  # columns only where they say something
        "source": any(r.source for r in rows),  # some expert came from the Hub
        "health": bool(health),  # a server answered
    }
    columns = ["name", "version", "enabled", "label", "expert", "τ", "query set", "token", "meta"]
    for col in [*columns, *(c for c, shown in optional.items() if shown)]:
        table.add_column(col)
    for r in rows:
        extra: dict[str, Any] = {
            "bias": f"{r.bias:+g}",
            "source": safe(_source_text(r.source)),
            "health": safe(_health_text(health.get(r.name))),
        }
        table.add_row(
            safe(r.name),
            safe(r.version),
            "yes" if r.enabled else "[dim]no[/dim]",
            safe(r.label or "-"),
            safe(_ref_text(r.expert_ref)),
            "-" if r.tau is None else f"{r.tau:g}",
            str(_summary(r)["query_set_size"] or "-"),
            short(r.token_sha256),
            short(r.meta_fingerprint),
            *(extra[c] for c, shown in optional.items() if shown),
        )
    return table


@app.command("show")
def show(name: Ref, json_out: Annotated[bool, json_option("Print the full manifest.")] = False) -> None:
    """Show one expert's manifest and where its files live."""
    reg = open_registry()
    row = reg.get_expert(name)
    if json_out:
        print_json(
            {
                **row.manifest,
                "expert": _redacted(row.manifest.get("expert") or {}),
                "source": row.source,
                "admission": row.admission,
            }
        )
        return
    from rich.table import Table

    m = row.manifest
    table = Table(show_header=False, title=safe(f"{row.name} {row.version}"))
    table.add_column(style="bold")
    table.add_column()
    qs = m.get("query_set") or {}
    tr = m.get("training") or {}
    for k, v in [
        ("enabled", "yes" if row.enabled else "no"),
        ("description", row.description or "-"),
        ("label", row.label or "-"),
        ("provider", m["provider"]),
        ("license", m["license"]),
        ("expert model", _ref_text(row.expert_ref)),
        ("allowed env", ", ".join(row.allowed_env or []) or "-"),
        ("routing bias", f"{row.bias:+g} (the operator's, `etr-hub expert tune`)"),
        ("source", row.source or "a bundle folder"),
        ("meta model", f"{m['meta']['reference']} ({short(row.meta_fingerprint)})"),
        ("token", f"{short(row.token_sha256)} {tuple(m['token']['shape'])} {m['token']['dtype']}"),
        (
            "query set",
            f"{qs.get('size', '-')} queries, τ={qs.get('tau')}, rule: {qs.get('selection_rule', '-')}" if qs else "-",
        ),
        ("training", f"{tr.get('epochs')} epochs, lr {tr.get('lr')}, final loss {tr.get('final_loss')}" if tr else "-"),
        ("decoding", _sampling_text(m.get("sampling") or {})),
        ("token file", str(reg.abspath(row.token_path))),
        ("created", m.get("created_at", "-")),
    ]:
        table.add_row(k, safe(v))
    out.print(table)
    if row.admission:
        _show_report(row.admission, out)
    else:
        out.print("no admission report (added with --no-report, or before reports existed)")


def _sampling_text(sampling: dict) -> str:
    """The bundle's declared decoding, as chat and serve apply it where a request sets nothing itself."""
    declared = ", ".join(f"{k} {v:g}" for k, v in sampling.items() if v is not None)
    return (declared + " (the bundle's; a request's own settings win)") if declared else "the meta model's defaults"


@app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="NAME (every version) or NAME@VERSION.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Unregister an expert and delete its stored files (unless shared)."""
    reg = open_registry()
    reg.get_expert(name)
    if not yes:
        if not sys.stdin.isatty():
            from etr_hub.errors import EtrHubError

            raise EtrHubError(f"refusing to remove '{name}' without confirmation", "pass --yes")
        typer.confirm(f"remove expert '{name}'?", abort=True, err=True)
    removed = reg.remove_expert(name)
    err.print(safe(f"removed {', '.join(f'{r.name}@{r.version}' for r in removed)}"), highlight=False)


@app.command("enable")
def enable(name: Ref) -> None:
    """Enable an expert (its token joins W_E at the next load); other versions are disabled."""
    row = open_registry().set_enabled(name, True)
    err.print(safe(f"enabled {row.name}@{row.version}"), highlight=False)


@app.command("disable")
def disable(name: Ref) -> None:
    """Disable an expert (its token leaves W_E at the next load)."""
    row = open_registry().set_enabled(name, False)
    err.print(safe(f"disabled {row.name}"), highlight=False)


@app.command("export")
def export(
    name: Ref,
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the bundle to.")],
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite an existing directory.")] = False,
) -> None:
    """Write a registered expert back out as a bundle (byte-identical token file)."""
    bundle = open_registry().export_expert(name, out_dir, replace=replace)
    err.print(safe(f"wrote {bundle.root}"), highlight=False)

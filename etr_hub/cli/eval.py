"""`etr-hub eval mmlu|tasks`: routing and answer accuracy against baselines (MMLU-Expert; open-answer tasks)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from etr_hub.cli.common import open_registry
from etr_hub.cli.options import DeviceOption, DtypeOption, JsonOption, map_option, plot_option, seed_option
from etr_hub.cli.output import note, out, print_json, safe, warn
from etr_hub.errors import EtrHubError
from etr_hub.runtime.options import DEFAULT_MAX_NEW_TOKENS

app = typer.Typer(no_args_is_help=True)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _parse_map(items: list[str], what: str = "SUBJECT") -> dict[str, str]:
    mapping = {}
    for item in items:
        subject, sep, expert = item.partition("=")
        if not sep or not subject.strip() or not expert.strip():
            raise EtrHubError(f"--map '{item}' is not {what}=EXPERT", "write e.g. --map astronomy=astro-expert")
        mapping[subject.strip()] = expert.strip()
    return mapping


DataDir = Annotated[
    Path,
    typer.Option("--data-dir", help="Folder of MMLU-format CSVs (SUBJECT_test.csv or SUBJECT_*.csv; no header)."),
]
Subjects = Annotated[
    list[str] | None,
    typer.Option("--subjects", help="Only these subjects (repeat the option or separate with commas)."),
]
SubjectMap = Annotated[list[str] | None, map_option("SUBJECT")]
MmluPlot = Annotated[Path | None, plot_option("subject")]
GeneralPrompts = Annotated[
    Path | None,
    typer.Option("--general-prompts", help="JSONL of everyday prompts ('query', 'split'); default: the project's own."),
]
NoBaselines = Annotated[bool, typer.Option("--no-baselines", help="Skip the prompt-based and embedding routers.")]
TaskData = Annotated[
    Path,
    typer.Option(
        "--data",
        help=(
            'JSONL, one {"question", "answer", "task"} per line (optional "kind": integer, integer_list, roman, '
            "binary, hex)."
        ),
    ),
]
TaskMap = Annotated[list[str] | None, map_option("TASK")]
TaskPlot = Annotated[Path | None, plot_option("task")]
MaxNewTokens = Annotated[
    int, typer.Option("--max-new-tokens", min=1, max=4096, help="Longest generated answer (greedy).")
]


@app.command("mmlu")
def mmlu(
    data_dir: DataDir,
    subjects: Subjects = None,
    mapping: SubjectMap = None,
    plot: MmluPlot = None,
    general_prompts: GeneralPrompts = None,
    no_baselines: NoBaselines = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    seed: Annotated[int, seed_option("Seed of the plug-and-play retraining.")] = 0,
    json_out: JsonOption = False,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
) -> None:
    """Route MMLU questions with the registered experts' tokens and score the answers, next to baselines."""
    from etr_hub.eval.run import EvalOptions, evaluate_mmlu

    wanted = [s.strip() for item in (subjects or []) for s in item.split(",") if s.strip()] or None
    prompts = _general_prompts(general_prompts)
    opts = EvalOptions(
        data_dir=data_dir,
        subjects=wanted,
        mapping=_parse_map(mapping or []),
        general_prompts=prompts,
        batch_size=batch_size,
        baselines=not no_baselines,
        seed=seed,
        device=device,
        dtype=dtype,
    )
    _run_and_report(evaluate_mmlu, opts, plot, json_out)


@app.command("tasks")
def tasks(
    data: TaskData,
    mapping: TaskMap = None,
    plot: TaskPlot = None,
    general_prompts: GeneralPrompts = None,
    no_baselines: NoBaselines = False,
    max_new_tokens: MaxNewTokens = DEFAULT_MAX_NEW_TOKENS,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1024)] = 8,
    seed: Annotated[int, seed_option("Seed of the random-expert baseline.")] = 0,
    json_out: JsonOption = False,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
) -> None:
    """Route open-answer questions with the experts' tokens, generate the answers, and score them against baselines."""
    from etr_hub.eval.tasks import TaskOptions, evaluate_tasks

    prompts = _general_prompts(general_prompts)
    opts = TaskOptions(
        data=data,
        mapping=_parse_map(mapping or [], "TASK"),
        general_prompts=prompts,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        baselines=not no_baselines,
        seed=seed,
        device=device,
        dtype=dtype,
    )
    _run_and_report(evaluate_tasks, opts, plot, json_out, per_key="per_task", title="tasks")


def _general_prompts(path: Path | None) -> Path:
    """--general-prompts, checked; else the project's own everyday prompts."""
    from etr_hub.eval.run import GENERAL_PROMPTS

    if path is None:
        return GENERAL_PROMPTS
    if not path.is_file():
        raise EtrHubError(
            f"--general-prompts {path} does not exist", "pass a JSONL file with 'query' and 'split' fields"
        )
    return path


def _run_and_report(evaluate, opts, plot: Path | None, json_out: bool, **show) -> None:
    """Run an evaluation with progress bars, then the plot, the warnings and a table or JSON."""
    from etr_hub.cli.flags import as_flags
    from etr_hub.cli.progress import bar_factory

    reg = open_registry()
    with bar_factory(quiet=json_out) as bars:
        report = evaluate(reg, opts, progress=bars, status=None if json_out else note)
    if plot is not None:
        from etr_hub.eval.plot import plot_report

        report["plot"] = str(plot_report(report, plot))
    for w in report["warnings"]:
        warn(as_flags(w))
    if json_out:
        print_json(report)
        return
    _show(report, **show)


BASELINE_NAMES = {
    "meta": "meta model alone",
    "oracle": "oracle expert",
    "random": "random expert",
    "etr_always_expert": "ETR, winner always answers",
    "prompt_router": "prompt-based router (Meta-Prompting-E)",
    "embedding_router": "embedding router (nearest centroid)",
}


def _show(r: dict, per_key: str = "per_subject", title: str = "MMLU-Expert") -> None:
    if r["routing_accuracy"] is None:
        out.print(
            safe(f"meta model alone: answer accuracy {_pct(r['accuracy'])} on {r['n']} questions"), highlight=False
        )
        return
    what = "task" if per_key == "per_task" else "subject"
    out.print(_methods_table(r, title))
    out.print(_per_item_table(r, per_key, what))
    out.print(_confusion_table(r, what))
    for line in _summary_lines(r):
        out.print(safe(line), highlight=False)


def _methods_table(r: dict, title: str):
    """ETR next to every baseline (and static vs dynamic training, when measured)."""
    from rich.table import Table

    t = Table(title=safe(f"{title}: {r['n']} questions, {len(r['experts'])} experts, meta {r['meta']}"))
    for col in ("method", "routing accuracy", "answer accuracy", "fire rate"):
        t.add_column(col, justify="left" if col == "method" else "right")
    t.add_row(
        "[bold]ETR (expert tokens)[/bold]", _pct(r["routing_accuracy"]), _pct(r["accuracy"]), _pct(r["fire_rate"])
    )
    for key, b in r["baselines"].items():
        t.add_row(BASELINE_NAMES.get(key, key), _pct(b.get("routing_accuracy")), _pct(b.get("accuracy")), "")
    d = r.get("dynamic")
    if d:
        for label, key in (
            ("static: all tokens trained together", "static"),
            (safe(f"dynamic: {', '.join(d['added_later'])} added later"), "dynamic"),
        ):
            t.add_row(label, _pct(d[key]["routing_accuracy"]), _pct(d[key]["accuracy"]), _pct(d[key]["fire_rate"]))
    return t


def _per_item_table(r: dict, per_key: str, what: str):
    from rich.table import Table

    s = Table(title=f"per {what}")
    for col in (what, "n", "expert", "routing", "fire", "meta acc", "ETR acc", "oracle acc"):
        s.add_column(col, justify="left" if col in (what, "expert") else "right")
    for subject, p in r[per_key].items():
        s.add_row(
            safe(subject),
            str(p["n"]),
            safe(p["expert"] or "-"),
            _pct(p.get("routing_accuracy")),
            _pct(p.get("fire_rate")),
            _pct(p["meta_accuracy"]),
            _pct(p["accuracy"]),
            _pct(p.get("oracle_accuracy")),
        )
    return s


def _confusion_table(r: dict, what: str):
    from rich.table import Table

    c = Table(title=f"routing confusion (rows: {what}, columns: winning expert token)")
    c.add_column(what)
    for e in r["experts"]:
        c.add_column(safe(e[:14]), justify="right")
    for subject, row in r["confusion"].items():
        c.add_row(safe(subject), *[str(row[e]) for e in r["experts"]])
    return c


def _summary_lines(r: dict) -> list[str]:
    """False fires, gap closed, the plug-and-play drop and the plot's path, one line each."""
    lines = []
    if r.get("false_fire_rate") is not None:
        g = r["general_prompts"]
        lines.append(f"false-fire rate on {g['n']} everyday prompts: {_pct(r['false_fire_rate'])} ({g['fired']} fired)")
    if r.get("gap_closed") is not None:
        lines.append(f"ETR closes {100 * r['gap_closed']:.0f}% of the meta → oracle answer-accuracy gap")
    elif r.get("gap_closed_reason"):
        lines.append(f"gap closed: not defined — {r['gap_closed_reason']}")
    d = r.get("dynamic")
    if d:
        lines.append(
            f"plug-and-play: routing drop {d['routing_drop_points']:+.2f} points, answer-accuracy drop "
            f"{d['accuracy_drop_points']:+.2f} points (static − dynamic)"
        )
    if r.get("plot"):
        lines.append(f"plot: {r['plot']}")
    return lines

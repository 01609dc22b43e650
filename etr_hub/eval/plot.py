"""The routing confusion heat map (the paper's Figure 4) and per-subject accuracy of an eval report
(`plot_report`; the CLI's `--plot FILE.png`)."""

from __future__ import annotations

from pathlib import Path

from etr_hub.errors import EtrHubError


def plot_report(report: dict, path: Path) -> Path:
    """Write the report's routing confusion (left) and per-subject or per-task accuracy (right) as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise EtrHubError("plotting a report needs matplotlib", "pip install 'etr-hub[eval]'") from None
    if not report.get("confusion"):
        raise EtrHubError(
            "nothing to plot: no subject was routed (no experts registered?)",
            "register experts, then evaluate again",
        )
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5.8), gridspec_kw={"width_ratios": [1.15, 1]})
    _confusion_panel(fig, ax, report)
    _accuracy_panel(bx, report)
    mmlu = "per_subject" in report
    fig.suptitle(f"{'MMLU-Expert' if mmlu else 'Tasks'} on {report.get('meta', 'the meta model')}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _confusion_panel(fig, ax, report: dict) -> None:
    """The paper's Figure 4: per subject (row), the share of questions each expert token wins."""
    confusion, experts = report["confusion"], report["experts"]
    subjects = sorted(confusion)
    counts = [[confusion[s][e] for e in experts] for s in subjects]
    shares = [[c / max(1, sum(row)) for c in row] for row in counts]
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(experts)), [e.replace("_", "\n") for e in experts], fontsize=8)
    ax.set_yticks(range(len(subjects)), [s.replace("_", " ") for s in subjects], fontsize=8)
    ax.set_xlabel("expert token that wins")
    ax.set_ylabel("question subject" if "per_subject" in report else "task")
    for i, row in enumerate(counts):
        for j, c in enumerate(row):
            color = "white" if shares[i][j] > 0.5 else "black"
            ax.text(j, i, f"{shares[i][j]:.0%}\n({c})", ha="center", va="center", fontsize=7, color=color)
    ax.set_title(f"ETR routing (accuracy {report['routing_accuracy']:.1%}, n={report['n']})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _accuracy_panel(bx, report: dict) -> None:
    """Per subject (or task): the meta model alone, ETR and the oracle expert, side by side."""
    subjects = sorted(report["confusion"])
    per = report.get("per_subject") or report["per_task"]
    mmlu = "per_subject" in report
    width = 0.27
    xs = range(len(subjects))
    for k, (key, label) in enumerate(
        [("meta_accuracy", "meta alone"), ("accuracy", "ETR"), ("oracle_accuracy", "oracle expert")]
    ):
        bx.bar([x + (k - 1) * width for x in xs], [per[s][key] for s in subjects], width, label=label)
    if mmlu:
        bx.axhline(0.25, color="grey", linestyle=":", linewidth=1, label="chance (25%)")
    bx.set_xticks(list(xs), [s.replace("_", "\n") for s in subjects], fontsize=8)
    bx.set_ylim(0, 1.14)  # headroom: the legend sits above bars that reach 100%
    bx.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    bx.set_ylabel("answer accuracy (letter scoring)" if mmlu else "answer accuracy (exact match, greedy)")
    b = report["baselines"]
    bx.set_title(
        f"answers: meta {b['meta']['accuracy']:.1%}, ETR {report['accuracy']:.1%}, oracle {b['oracle']['accuracy']:.1%}"
    )
    bx.legend(fontsize=8, loc="upper center", ncol=4, frameon=False)

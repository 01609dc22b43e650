r"""Print the README's MMLU-Expert tables (markdown) from `etr-hub eval mmlu --json` outputs.

python recipes/mmlu_experts/report.py \
    .work/mmlu/eval_labelled.json .work/mmlu/eval_paper.json .work/mmlu/build_summary.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PAPER = {  # Qwen-7B-Chat as meta model (arXiv 2403.16854)
    "etr": (82.11, 73.52),
    "meta": (None, 60.73),
    "oracle": (100.0, 78.44),
    "random": (16.67, None),
    "prompt_router": (67.08, None),
    "embedding_router": (None, None),
}


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def paper(v) -> str:
    return "–" if v is None else f"{v:.2f}%"


def main() -> None:
    lab, pap, summary = (json.loads(Path(p).read_text()) for p in sys.argv[1:4])
    b = lab["baselines"]
    rows = [
        ("**ETR, labelled query sets (shipped)**", lab["routing_accuracy"], lab["accuracy"], "etr"),
        ("ETR, paper rule (loss gap > τ)", pap["routing_accuracy"], pap["accuracy"], None),
        ("meta model alone", None, b["meta"]["accuracy"], "meta"),
        ("oracle expert", 1.0, b["oracle"]["accuracy"], "oracle"),
        ("random expert (expectation)", b["random"]["routing_accuracy"], b["random"]["accuracy"], "random"),
        (
            "prompt-based router (Meta-Prompting-E analogue)",
            b["prompt_router"]["routing_accuracy"],
            b["prompt_router"]["accuracy"],
            "prompt_router",
        ),
        (
            f"embedding router ({b['embedding_router'].get('embedder', '')})",
            b["embedding_router"]["routing_accuracy"],
            b["embedding_router"]["accuracy"],
            "embedding_router",
        ),
    ]
    print("| method | routing accuracy | answer accuracy | paper (Qwen-7B-Chat): routing | paper: answer |")
    print("|---|---|---|---|---|")
    for name, r, a, key in rows:
        pr, pa = PAPER.get(key, (None, None)) if key else (None, None)
        print(f"| {name} | {pct(r)} | {pct(a)} | {paper(pr)} | {paper(pa)} |")
    d = lab["dynamic"]
    closed = "–" if lab["gap_closed"] is None else f"{100 * lab['gap_closed']:.0f}%"
    print()
    print(
        f"n = {lab['n']} questions; fire rate {pct(lab['fire_rate'])}; "
        f"false-fire rate on {lab['general_prompts'].get('n')} everyday prompts {pct(lab['false_fire_rate'])} "
        f"(paper route: {pct(pap['false_fire_rate'])}); meta → oracle answer gap closed: {closed}."
    )
    print()
    print("| plug-and-play | routing accuracy | answer accuracy |")
    print("|---|---|---|")
    print(
        f"| static (six tokens trained together) | {pct(d['static']['routing_accuracy'])} | "
        f"{pct(d['static']['accuracy'])} |"
    )
    print(
        f"| dynamic (four, then {', '.join(d['added_later'])} added with train-token) | "
        f"{pct(d['dynamic']['routing_accuracy'])} | {pct(d['dynamic']['accuracy'])} |"
    )
    print(f"| drop (points) | {d['routing_drop_points']:+.2f} | {d['accuracy_drop_points']:+.2f} |")
    print()
    print(
        "| subject | n | routing (labelled) | routing (paper rule) | fire | meta acc | own expert acc | "
        "best other expert acc | ETR acc | query-set purity, paper rule | gap in-domain / out (nats) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s, p in lab["per_subject"].items():
        others = [v for e, v in lab["expert_accuracy"][s].items() if e != p["expert"]]
        q = summary["paper_query_sets"].get(s, {})
        gap = f"{q['in_domain_gap']:.2f} / {q['out_of_domain_gap']:.2f}" if q.get("in_domain_gap") is not None else "–"
        print(
            f"| {s} | {p['n']} | {pct(p['routing_accuracy'])} | {pct(pap['per_subject'][s]['routing_accuracy'])} | "
            f"{pct(p['fire_rate'])} | {pct(p['meta_accuracy'])} | {pct(p['oracle_accuracy'])} | "
            f"{pct(max(others) if others else None)} | {pct(p['accuracy'])} | {pct(q.get('purity'))} | {gap} |"
        )


if __name__ == "__main__":
    main()

"""Do open questions, typed as a user would, reach the right shipped expert? (The eval asks
MMLU's lettered questions; a chat user does not.) The 24 questions in open_questions.jsonl
are the project's own, four per subject, written for this check and used in no training.

    python recipes/mmlu_experts/open_routing.py [--json]

Uses the registered experts of $ETR_HUB_HOME and `Hub.explain`, i.e. the routing position
that `etr-hub chat` routes at by default.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

QUESTIONS = Path(__file__).with_name("open_questions.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from etr_hub.runtime import Hub

    rows = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    hub = Hub.open()
    results = []
    for row in rows:
        exp = hub.explain(row["query"], top=1)
        top = exp.experts[0] if exp.experts else None
        results.append(
            {
                "query": row["query"],
                "label": row["label"],
                "routed_to": exp.winner,
                "top_expert": top.name if top else None,
                "p_top_expert": round(top.probability, 4) if top else 0.0,
            }
        )
    routed = sum(r["routed_to"] == r["label"] for r in results)
    summary = {
        "n": len(results),
        "routed_correctly": routed,
        "routing_accuracy": routed / len(results),
        "top_expert_correct": sum(r["top_expert"] == r["label"] for r in results) / len(results),
        "questions": results,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    table = Table("question", "subject", "routed to", "p(top expert)")
    for r in results:
        mark = "" if r["routed_to"] == r["label"] else " ✗"
        table.add_row(r["query"], r["label"], f"{r['routed_to'] or 'meta model'}{mark}", f"{r['p_top_expert']:.3f}")
    Console().print(table)
    print(
        f"routed to the right expert: {routed}/{len(results)}; right expert ranked first among experts: "
        f"{summary['top_expert_correct']:.0%}"
    )


if __name__ == "__main__":
    main()

r"""Print the README's skill-expert tables (markdown) from the JSON files build.py and plug_and_play.py write.

    python recipes/skills/report.py [--work .work/skills]

Reads WORK/eval_skills.json (`eval tasks`, the shipped skill experts), WORK/build_summary.json
(query-set purity and loss gaps), and the plug-and-play runs: WORK/eval_mmlu_six.json and
WORK/eval_{tasks,mmlu}_all_{skills,mmlu}_first.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def load(work: Path, name: str) -> dict:
    return json.loads((work / name).read_text())


def methods(r: dict) -> None:
    b = r["baselines"]
    tokens = f"{len(r['experts'])} skill token{'s' * (len(r['experts']) > 1)}"
    rows = [
        (f"**ETR ({tokens})**", r["routing_accuracy"], r["accuracy"]),
        ("meta model alone", None, b["meta"]["accuracy"]),
        ("oracle expert", 1.0, b["oracle"]["accuracy"]),
        ("random expert (one seeded pick per question)", b["random"]["routing_accuracy"], b["random"]["accuracy"]),
        ("prompt-based router", b["prompt_router"]["routing_accuracy"], b["prompt_router"]["accuracy"]),
        (
            f"embedding router ({b['embedding_router'].get('embedder', '')})",
            b["embedding_router"]["routing_accuracy"],
            b["embedding_router"]["accuracy"],
        ),
    ]
    print("| method | routing accuracy | answer accuracy (exact match) |")
    print("|---|---|---|")
    for name, routing, acc in rows:
        print(f"| {name} | {pct(routing)} | {pct(acc)} |")
    closed = "null" if r["gap_closed"] is None else f"{100 * r['gap_closed']:.1f}%"
    print()
    print(
        f"n = {r['n']} questions; fire rate {pct(r['fire_rate'])}; false-fire rate on "
        f"{r['general_prompts'].get('n')} everyday prompts {pct(r['false_fire_rate'])}; "
        f"gap closed = (ETR − meta) / (oracle − meta) = {closed}."
    )
    if len(r["experts"]) == 1:
        print(
            "\nWith one skill expert, any router that always picks an expert is the oracle here: what the token adds "
            "is deciding *whether* to hand over (fire rate, false fires) and, with the MMLU experts registered "
            "(below), *to which family*."
        )


def per_task(r: dict, summary: dict) -> None:
    print()
    print(
        "| task | n | routing | fire | meta acc | oracle (own expert) acc | ETR acc | "
        "query-set size, purity (paper rule) | loss gap in-domain / out (nats) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for task, p in r["per_task"].items():
        q = summary.get("query_sets", {}).get(task, {})
        gap = f"{q['in_domain_gap']:.1f} / {q['out_of_domain_gap']:.1f}" if q.get("in_domain_gap") is not None else "–"
        print(
            f"| {task} | {p['n']} | {pct(p['routing_accuracy'])} | {pct(p['fire_rate'])} | {pct(p['meta_accuracy'])} "
            f"| {pct(p['oracle_accuracy'])} | {pct(p['accuracy'])} | {q.get('size', '–')}, {pct(q.get('purity'))} "
            f"| {gap} |"
        )


def across(report: dict, family: set[str]) -> int:
    """Questions of this report routed to an expert of the other family (from its routing confusion)."""
    return sum(n for row in report["confusion"].values() for expert, n in row.items() if expert not in family and n)


def plug_and_play(work: Path, skills4: dict) -> None:
    six = load(work, "eval_mmlu_six.json")
    skills, mmlu = set(skills4["experts"]), set(six["experts"])
    runs = {
        "six MMLU experts first (`expert add`), then the skills (`query-set build`, `train-token`)": "mmlu_first",
        "the skills first (`expert add`), then the six MMLU experts (`expert add`)": "skills_first",
    }
    print()
    print(
        f"| {len(skills | mmlu)} experts registered | skills routing ({len(skills)} alone: "
        f"{pct(skills4['routing_accuracy'])}) | drop (points) | MMLU dev routing (six alone: "
        f"{pct(six['routing_accuracy'])}) | drop (points) | skill questions → an MMLU expert | "
        "MMLU questions → a skill expert | false fires |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, key in runs.items():
        t, m = load(work, f"eval_tasks_all_{key}.json"), load(work, f"eval_mmlu_all_{key}.json")
        if not skills <= set(t["experts"]):  # an earlier run, with fewer skill experts: do not mix it in
            part = key.removesuffix("_first")
            print(f"| {name} | not measured with {', '.join(sorted(skills))} (`plug_and_play.py --part {part}`) |")
            continue
        dt = 100 * (skills4["routing_accuracy"] - t["routing_accuracy"])
        dm = 100 * (six["routing_accuracy"] - m["routing_accuracy"])
        print(
            f"| {name} | {pct(t['routing_accuracy'])} | {dt:+.2f} | {pct(m['routing_accuracy'])} | {dm:+.2f} "
            f"| {across(t, skills)} of {t['n']} | {across(m, mmlu)} of {m['n']} | {pct(t['false_fire_rate'])} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".work" / "skills")
    work = ap.parse_args().work
    skills4 = load(work, "eval_skills.json")
    methods(skills4)
    per_task(skills4, load(work, "build_summary.json"))
    plug_and_play(work, skills4)


if __name__ == "__main__":
    main()

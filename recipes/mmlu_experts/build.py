"""Rebuild the six shipped MMLU experts (plugins/<subject>/) from the MMLU CSVs, seeded.

    python recipes/mmlu_experts/build.py --data ../shared/data/mmlu [--seed 0] [--work .work/mmlu]

Steps (each uses the project's own commands; only the LoRA fine-tuning is a script here):
 1. data: read dev+val+test of the six subjects, split each deterministically into expert
    training / query pool / dev evaluation (etr_hub.eval.mmlu.split_subject), add related
    subjects' questions to each expert's training data and unrelated subjects' questions to
    the pool as distractors; write WORK/train/<subject>.jsonl, WORK/pool/<subject>.jsonl,
    WORK/pool.jsonl, WORK/paper_pool.jsonl (8 pool questions per subject + 24 distractors) and
    WORK/dev_eval/<subject>_test.csv (what `etr-hub eval mmlu` measures on).
 2. LoRA: train_lora.py per subject -> WORK/adapters/<subject> (fp16, r=8 on q/v, top layers).
 3. labelled route (shipped): `etr-hub query-set build S --rule labelled --label S`, then
    `etr-hub train-token S`, then `etr-hub expert export S plugins/S` (+ model card); the
    query set is built from WORK/pool/S.jsonl: the subject's labelled pool questions, lettered
    (as the eval asks them) and, where the stem stands on its own, open (as a user types them).
 4. paper route (compared, not shipped): the same adapters in a second home with
    `etr-hub query-set build S --data paper_pool.jsonl --rule paper --tau T`. Every row of a
    paper-route pool costs a forward pass of the meta model and of each of the six experts,
    which is why that pool is small on a CPU.
Re-running skips adapters that already exist (pass --fresh to retrain them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from etr_hub.eval.mmlu import (
    MMLU_EXPERT_SUBJECTS,
    Question,
    pick_distractors,
    read_mmlu_dir,
    render_query,
    render_response,
    split_subject,
    write_mmlu_csv,
)

# Neighbouring MMLU subjects whose questions widen each expert's training data (all splits).
RELATED = {
    "astronomy": ["conceptual_physics", "college_physics"],
    "electrical_engineering": ["high_school_physics", "college_computer_science", "computer_security"],
    "human_sexuality": ["human_aging", "high_school_psychology"],
    "international_law": ["jurisprudence", "professional_law"],
    "prehistory": ["world_religions", "high_school_world_history", "global_facts"],
    "security_studies": ["us_foreign_policy", "high_school_government_and_politics"],
}
DESCRIPTIONS = {
    "astronomy": (
        "Astronomy: stars, planets, the solar system, galaxies, cosmology, telescopes and orbital mechanics."
    ),
    "electrical_engineering": (
        "Electrical engineering: circuits, voltage and current, signals, electronics, machines and power systems."
    ),
    "human_sexuality": (
        "Human sexuality: sexual health, reproduction, sexual behaviour, gender, relationships and sex research."
    ),
    "international_law": (
        "International law: treaties, state sovereignty, the UN Charter, human rights law and international courts."
    ),
    "prehistory": (
        "Prehistory and archaeology: early humans, the Stone Age, ancient sites, dating methods "
        "and early civilisations."
    ),
    "security_studies": (
        "Security studies: war, strategy, deterrence, terrorism, arms control and international security theory."
    ),
}
MAX_QUERY_CHARS = 500  # long reading passages cost LoRA time and teach little about the domain
TRAIN_SIZE = 120  # examples per expert (own training part first, then related subjects)
DISTRACTORS = 150
QUERY_SET_SIZE = 200  # labelled route: lettered and open forms of the subject's pool questions
PAPER_POOL = (8, 24)  # paper route: per-subject pool questions, distractors (each row costs 7 scoring passes)


def train_token_args(cli: str, name: str, seed: int, description: str, out: Path) -> list[str]:
    """`etr-hub train-token NAME …` as the shipped bundles are trained: version 1.0.0, Apache-2.0, by etr-hub."""
    flags = {"--seed": str(seed), "--version": "1.0.0", "--license": "Apache-2.0", "--provider": "etr-hub"}
    flags |= {"--description": description, "--out": str(out)}
    return [cli, "train-token", name, *(x for pair in flags.items() for x in pair), "--replace", "--json"]


def paper_rule_args(cli: str, subject: str, work: Path, seed: int, tau: str) -> list[str]:
    """`etr-hub query-set build SUBJECT` by the paper's rule (loss gap > τ) over the mixed pool, 100 queries."""
    head = [cli, "query-set", "build", subject, "--expert", str(work / "adapters" / subject)]
    pool = ["--data", str(work / "paper_pool.jsonl"), "--rule", "paper", "--tau", tau, "--label", subject]
    return [*head, *pool, "--size", "100", "--seed", str(seed), "--json"]


def run(cmd: list[str], home: Path, log: list[dict]) -> dict | None:
    t0 = time.perf_counter()
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "ETR_HUB_HOME": str(home)}
    if cmd[1] == "train-token":  # thousands of tiny steps: one thread (a busy 2-core CPU made 2 threads ~100x slower)
        env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"step failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr.strip()[-2000:]}")
    log.append({"cmd": " ".join(cmd), "seconds": round(time.perf_counter() - t0, 1)})
    return json.loads(res.stdout) if "--json" in cmd and res.stdout.strip() else None


def etr_hub() -> str:
    exe = Path(sys.executable).parent / "etr-hub"
    return str(exe) if exe.exists() else "etr-hub"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def pair(q: Question) -> dict:
    return {"query": render_query(q), "response": render_response(q), "label": q.subject}


# Stems that read as a question on their own (not "Which of the following…", not a blank to fill).
SELF_CONTAINED = re.compile(r"following|of these|above|_{2,}|statement", re.IGNORECASE)


def open_pair(q: Question) -> dict | None:
    """The question as a user would type it in a chat: the stem alone, answered by the option's
    text. Routing states of these teach a token open questions too, not only lettered ones."""
    stem = " ".join(q.question.split())
    if SELF_CONTAINED.search(stem) or not 25 <= len(stem) <= 300:
        return None
    return {"query": stem, "response": q.choices[q.answer_index].strip(), "label": q.subject}


def prepare_data(data: Path, work: Path, seed: int) -> dict:
    by_split = {split: read_mmlu_dir(data / split) for split in ("dev", "val", "test")}
    every: dict[str, list[Question]] = {}
    for res in by_split.values():
        for subject, qs in res.questions.items():
            every.setdefault(subject, []).extend(qs)
    counts = {}
    pool: list[dict] = []
    for subject in MMLU_EXPERT_SUBJECTS:
        parts = split_subject(every[subject], seed=seed)
        counts[subject] = {p: len(v) for p, v in parts.items()}
        own = [pair(q) for q in parts["train"]]
        related = [q for s in RELATED[subject] for q in every.get(s, []) if len(render_query(q)) <= MAX_QUERY_CHARS]
        extra = pick_distractors(
            {s: [q for q in related if q.subject == s] for s in RELATED[subject]}, TRAIN_SIZE - len(own), seed=seed
        )
        write_jsonl(work / "train" / f"{subject}.jsonl", own + [pair(q) for q in extra])
        counts[subject]["train_related"] = len(extra)
        pool += [pair(q) for q in parts["pool"]]
        opened = [r for r in map(open_pair, parts["pool"]) if r is not None]
        write_jsonl(work / "pool" / f"{subject}.jsonl", [pair(q) for q in parts["pool"]] + opened)
        counts[subject]["pool_open"] = len(opened)
        write_mmlu_csv(work / "dev_eval" / f"{subject}_test.csv", parts["eval"])
    used = set(MMLU_EXPERT_SUBJECTS) | {s for v in RELATED.values() for s in v}
    others = {
        s: [q for q in qs if len(render_query(q)) <= MAX_QUERY_CHARS]
        for s, qs in by_split["test"].questions.items()
        if s not in used
    }
    distractors = pick_distractors(others, DISTRACTORS, seed=seed)
    write_jsonl(work / "pool.jsonl", pool + [pair(q) for q in distractors])
    counts["pool_distractors"] = len(distractors)
    # the paper route scores every pool row with the meta model and all six experts: a smaller mixed pool
    per, n_distract = PAPER_POOL
    small = [r for s in MMLU_EXPERT_SUBJECTS for r in [x for x in pool if x["label"] == s][:per]]
    write_jsonl(work / "paper_pool.jsonl", small + [pair(q) for q in distractors[:n_distract]])
    counts["paper_pool"] = len(small) + n_distract
    return counts


def model_card(subject: str, manifest: dict, split_counts: dict, route: str, lora: dict) -> str:
    qs = manifest.get("query_set", {})
    tr = manifest.get("training", {})
    negatives = ", ".join(tr.get("negatives", [])) or "none"
    return f"""# {subject} expert (MMLU-Expert)

{DESCRIPTIONS[subject]}

- **Expert model:** a LoRA adapter (r={lora["r"]} on {"/".join(sorted(lora["target_modules"]))} of decoder layers
  {min(lora["layers_to_transform"])}–{max(lora["layers_to_transform"])}, float16) over the embedded meta model
  SmolLM2-135M-Instruct; it shares the meta model's weights.
- **Training data:** {split_counts["train"]} MMLU `{subject}` questions from the recipe's training part plus
  {split_counts["train_related"]} questions of related subjects ({", ".join(RELATED[subject])}), rendered as
  multiple-choice questions with the reply `Answer: X. text`.
- **Query set:** {qs.get("size")} queries, rule `{qs.get("selection_rule")}` ({route} route), seed {qs.get("seed")}.
- **Expert token:** trained with `etr-hub train-token` ({tr.get("epochs")} epochs, {tr.get("stopped")}), with the
  tokens trained before it frozen in the softmax and their query sets as negatives: {negatives}.
- **Evaluation:** see the README's "MMLU-Expert results" (`etr-hub eval mmlu`). The questions of the
  recipe's dev-evaluation part were used neither for the adapter nor for the query set.
- **Data licence:** MMLU (Hendrycks et al.), MIT. **Base model:** SmolLM2-135M-Instruct, Apache-2.0.
- **Rebuild:** `python recipes/mmlu_experts/build.py --data ../shared/data/mmlu --seed 0`
"""


def add_model_card(bundle_dir: Path, text: str, sampling: dict | None = None) -> None:
    """Put the card in the exported bundle and name it in the manifest, with the expert's declared decoding
    (`sampling`) if given (the token is untouched)."""
    from etr_hub.bundle import load_bundle, write_bundle

    bundle = load_bundle(bundle_dir)
    files = {
        p.relative_to(bundle_dir).as_posix(): p
        for p in bundle_dir.iterdir()
        if p.name not in ("expert.json", "README.md")
    }
    tmp_card = bundle_dir.parent / f".{bundle_dir.name}-README.md"
    tmp_card.write_text(text, encoding="utf-8")
    files["README.md"] = tmp_card
    staged = bundle_dir.parent / f".{bundle_dir.name}-staged"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(bundle_dir, staged)
    files = {rel: staged / rel if rel != "README.md" else tmp_card for rel in files}
    update: dict = {"model_card": "README.md"}
    if sampling is not None:
        from etr_hub.bundle.manifest import Sampling

        update["sampling"] = Sampling(**sampling)
    write_bundle(bundle_dir, bundle.manifest.model_copy(update=update), files, replace=True)
    shutil.rmtree(staged, ignore_errors=True)
    tmp_card.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description="Rebuild the six shipped MMLU experts.")
    ap.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "mmlu",
        help="folder with dev/ val/ test/ MMLU CSVs",
    )
    ap.add_argument("--work", type=Path, default=ROOT / ".work" / "mmlu")
    ap.add_argument("--plugins", type=Path, default=ROOT / "plugins")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument(
        "--paper-tau",
        type=float,
        default=None,
        help="τ for the compared paper route (default: a τ passing ~100 queries)",
    )
    ap.add_argument("--fresh", action="store_true", help="retrain adapters that already exist")
    ap.add_argument("--skip-paper", action="store_true", help="do not build the compared paper-route tokens")
    ap.add_argument(
        "--data-only", action="store_true", help="only write the split (e.g. WORK/dev_eval for `etr-hub eval mmlu`)"
    )
    args = ap.parse_args()
    work, cli, log = args.work.resolve(), etr_hub(), []
    t_start = time.perf_counter()

    counts = prepare_data(args.data, work, args.seed)
    (work / "split.json").write_text(json.dumps(counts, indent=2))
    print("split:", json.dumps(counts), flush=True)
    if args.data_only:
        return

    home = work / "home"
    run([cli, "init"], home, log)
    for subject in MMLU_EXPERT_SUBJECTS:
        out = work / "adapters" / subject
        if out.exists() and not args.fresh:
            continue
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("train_lora.py")),
                "--data",
                str(work / "train" / f"{subject}.jsonl"),
                "--out",
                str(out),
                "--epochs",
                str(args.epochs),
                "--seed",
                str(args.seed),
                "--threads",
                str(args.threads),
            ],
            env={**os.environ, "ETR_HUB_HOME": str(home)},
            check=True,
        )
        log.append({"cmd": f"train_lora.py {subject}", "seconds": round(time.perf_counter() - t0, 1)})

    # labelled route -> the shipped bundles
    builds = {}
    for subject in MMLU_EXPERT_SUBJECTS:
        builds[subject] = run(
            [
                cli,
                "query-set",
                "build",
                subject,
                "--expert",
                str(work / "adapters" / subject),
                "--data",
                str(work / "pool" / f"{subject}.jsonl"),
                "--rule",
                "labelled",
                "--label",
                subject,
                "--size",
                str(QUERY_SET_SIZE),
                "--seed",
                str(args.seed),
                "--batch-size",
                "16",
                "--json",
            ],
            home,
            log,
        )
    for subject in MMLU_EXPERT_SUBJECTS:  # a re-run trains every token afresh, in the same order
        if _registered(cli, home, subject):
            run([cli, "expert", "remove", subject, "--yes"], home, log)
    for subject in MMLU_EXPERT_SUBJECTS:
        run(train_token_args(cli, subject, args.seed, DESCRIPTIONS[subject], work / "bundles" / subject), home, log)
    for subject in MMLU_EXPERT_SUBJECTS:
        dest = args.plugins / subject
        run([cli, "expert", "export", subject, str(dest), "--replace"], home, log)
        manifest = json.loads((dest / "expert.json").read_text())
        lora = json.loads((dest / "adapter" / "adapter_config.json").read_text())
        add_model_card(dest, model_card(subject, manifest, counts[subject], "labelled", lora))

    # paper route, for the side-by-side eval: a second home that shares the caches
    paper = {}
    if not args.skip_paper:
        phome = work / "paper_home"
        shutil.rmtree(phome, ignore_errors=True)
        shutil.copytree(home, phome, ignore=shutil.ignore_patterns("registry.db*", "store", "bundles"))
        run([cli, "init"], phome, log)
        for subject in MMLU_EXPERT_SUBJECTS:
            tau = args.paper_tau
            if tau is None:  # the top quarter of the loss gaps (τ = their 75th percentile), down-sampled to 100
                probe = run(
                    paper_rule_args(cli, subject, work, args.seed, "-1000000"),
                    phome,
                    log,
                )
                tau = float(probe["loss_gap"]["quantiles"]["p75"])
            paper[subject] = run(
                paper_rule_args(cli, subject, work, args.seed, f"{tau:g}"),
                phome,
                log,
            )
        for subject in MMLU_EXPERT_SUBJECTS:
            run(
                train_token_args(cli, subject, args.seed, DESCRIPTIONS[subject], work / "paper_bundles" / subject),
                phome,
                log,
            )

    summary = {
        "seed": args.seed,
        "split": counts,
        "seconds": round(time.perf_counter() - t_start, 1),
        "steps": log,
        "query_sets": {
            s: {k: builds[s].get(k) for k in ("size", "purity", "in_domain_gap", "out_of_domain_gap", "loss_gap")}
            for s in builds
        },
        "paper_query_sets": {
            s: {k: paper[s].get(k) for k in ("size", "tau", "purity", "in_domain_gap", "out_of_domain_gap")}
            for s in paper
        },
    }
    (work / "build_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("seconds", "query_sets", "paper_query_sets")}, indent=2))


def _registered(cli: str, home: Path, subject: str) -> bool:
    res = subprocess.run(
        [cli, "expert", "list", "--json"], env={**os.environ, "ETR_HUB_HOME": str(home)}, capture_output=True, text=True
    )
    return res.returncode == 0 and any(e["name"] == subject for e in json.loads(res.stdout or "[]"))


if __name__ == "__main__":
    main()

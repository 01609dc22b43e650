"""Build the skill experts (plugins/<skill>/), seeded, with the paper's own query-set rule.

    python recipes/skills/build.py [--seed 0] [--work .work/skills] [--device cpu|cuda] [--skills arithmetic,roman]

Steps (each uses the project's own commands; only the LoRA fine-tuning is a script):
 1. data: recipes/skills/tasks.py writes each skill's train / pool / eval rows (disjoint by
    problem; eval also in phrasings held out of training) and WORK/eval.jsonl for `eval tasks`.
 2. LoRA: recipes/mmlu_experts/train_lora.py per skill -> WORK/adapters/<skill> (resumable:
    an interrupted run continues from its last save with the same command); a skill in LATER_PHASES
    trains WORK/adapters/<skill>.phase1 … first and continues from each with a schedule of its own.
 3. one mixed pool, no labels used for selection: the skills' pool questions (all the generated skills; a skill with
    a composer also in composed phrasings, `composed_pool`) with their worked answers, MMLU questions of other
    subjects with their answers, and the project's everyday training prompts answered by the meta model itself
    (greedy) - a provider's style-matched control, so that answering in one's own words is no "expertise".
 4. paper rule: `etr-hub query-set build S --data pool.jsonl --tau T --versus OTHER...` (loss gap > τ,
    eq. 3, against the better of the meta model and the other skills' adapters, so that a short worked
    answer several adapters predict well is no one's expertise but the best one's), the label used only
    to report purity; then `etr-hub train-token S` one after another and
    `etr-hub expert export S plugins/S` with a model card. The tokens are trained in a registry that
    holds the six shipped MMLU experts, whose query sets are negatives: either family may join first.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from etr_hub.eval.mmlu import MMLU_EXPERT_SUBJECTS
from etr_hub.jsonl import query_column
from recipes.mmlu_experts.build import add_model_card, etr_hub, run, train_token_args, write_jsonl
from recipes.skills.generators import COMPOSED, STYLE_NOTES
from recipes.skills.tasks import SKILLS, generate

DESCRIPTIONS = {
    "arithmetic": (
        "Arithmetic: adds and subtracts integers of up to 4 digits and multiplies up to 3-digit by 2-digit numbers, "
        "column by column."
    ),
    "sorting": "Sorting: puts 4 to 10 integers (negatives too) in ascending or descending order.",
    "roman": "Roman numerals: converts integers from 1 to 3999 to Roman numerals and Roman numerals back to integers.",
    "base_conversion": "Base conversion: decimal to and from binary (0-1023) and hexadecimal (0-65535).",
    "number_words": "Number words: writes numbers given in words (zero to 999,999) as plain digits.",
    "number_to_words": (
        "Numbers to words: writes a number given in digits (0 to 999,999) out in English words, as on a cheque."
    ),
}
LORA = {
    "r": 16,
    "alpha": 32,
    "targets": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    "top_layers": 16,
    "lr": 2e-3,
    "batch_size": 16,
}
# steps run (a CPU budget; resumable, so a larger number continues a run): Roman was at 98/100 exact at 350
# of 600 scheduled; a step costs ~10-19 s on 2 CPU cores with these long worked answers (number words: ~6 s)
STOP_AFTER = {
    "arithmetic": 220,
    "roman": 350,
    "sorting": 220,
    "base_conversion": 200,
    "number_words": 250,
    "number_to_words": 250,
}
SIZES = {"train": 6000, "pool": 60, "eval": 100}


# epochs over the training rows: 600 scheduled steps, or a cosine that ends where the run stops (COSINE_ENDS_AT_STOP)
def epochs_for(steps: int) -> float:
    return steps * LORA["batch_size"] / SIZES["train"]


COSINE_ENDS_AT_STOP = {
    "arithmetic",
    "sorting",
    "number_words",
    "number_to_words",
}  # the others keep Roman's 600-step schedule
EPOCHS = {s: epochs_for(STOP_AFTER[s] if s in COSINE_ENDS_AT_STOP else 600) for s in STOP_AFTER}
# then later phases, each from the previous phase's adapter with its own cosine (peak lr, steps) and data order
# (seed + phase - 1); `fresh`: on newly generated training problems (generator seed + phase - 1; the train split,
# so never an eval problem). Arithmetic's first 220 steps ended at 78/100 exact (misses: borrow slips and product
# digits), 160 more at 88/100 (100 more on the same problems at lr 5e-4 fell back to 84/100), and the 150 below on
# fresh problems reached 92/100 (pool split 52/60, where it was chosen; phase 2: 50/60).
# A fourth phase (`focus`: half the fresh problems from generators.FOCUS) weights up sums and differences of numbers
# of different lengths, where phase 3 still slipped (29/40 of 4-digit minus 3-digit differences, 4821 - 377 among them).
# It reached 36/40 on those and pool split 55/60 (chosen on it), and 90/100 on eval (phase 3: 92/100, within noise).
# Phases 5-7 answer with each carry added apart (`style`), weighting up products, then products of every shape, then
# both those and unequal-length sums (seed-7 eval questions, own / blind phrasings: phase 4 102 / 92 of 120, phase 7
# 114 / 100, chosen on them; eval 87/100, phase 4: 90/100). Phase 8 asks half its problems as word problems or typed
# in a hurry (`composed`: generators.COMPOSED), where phase 7 misread the operation (seed 7 own / first blind set:
# 110 / 108, chosen on them; second blind set, written after it: 94/120; eval 88/100).
# Phase 9 is phase 8's mix again, 60 steps on new problems: seed 7 own 112/120 (shipped if >= 110, a rule fixed
# before), second blind set 97/120, eval 95/100.
LATER_PHASES = {
    "arithmetic": [
        {"lr": 1e-3, "steps": 160},
        {"lr": 1e-3, "steps": 150, "fresh": True},
        {"lr": 1e-3, "steps": 100, "fresh": True, "focus": "unequal_lengths"},
        {"lr": 1e-3, "steps": 120, "fresh": True, "focus": "products", "style": "carry_apart"},
        {"lr": 5e-4, "steps": 40, "fresh": True, "focus": "product_shapes", "style": "carry_apart"},
        {"lr": 5e-4, "steps": 40, "fresh": True, "focus": "every_form", "style": "carry_apart"},
        {"lr": 5e-4, "steps": 40, "fresh": True, "composed": True, "style": "carry_apart"},
        # phase 9: phase 8's mix again, 60 steps longer (above)
        {"lr": 5e-4, "steps": 60, "fresh": True, "composed": True, "style": "carry_apart"},
        # tried in its place, not shipped: 60 steps (lr 5e-4, seed 8), half `signs` in composed wordings, in a first
        # `compared` style that wrote the comparison before the question, by counting digits (`184 and 284 both have 4
        # digits; …`): seed-7 own phrasings 77/120 (phase 8: 110) - it compared and subtracted for sums and products
        # too, and miscounted digits. `compared` now states the question first and compares by place: the same 60
        # steps -> 86/120 (+ 35/38, - 24/36, x 27/46): the held-out `What's the product of a and b?` read as a
        # difference, comparisons misread (`thousands 1 > 9`); half the rows differences shifted its operations.
        # Without the focus (phase 8's own mix in `compared`, 60 steps): 103/120 (+ 32/38, - 27/36, x 44/46), the
        # comparisons still misread (`thousands 6 > 9, so 6802 > 9833`) and sums with a short operand compared.
    ],
    # 250 steps learned the style (pool split 60/60) but misread the number in one held-out phrasing (eval
    # 75/100, all 25 misses `Hey, type N as words please` -> 591 for 9,301); half the fresh problems get a
    # greeting and a sign-off around the training phrasings (tasks.wrap), the held-out phrasings untouched
    # -> 84/100, 15 of 16 misses still that phrasing; 100 more such steps (seed 2) fell back to 80/100. Then half
    # in phrasings composed from parts, none with the held-out phrasings' words -> 86/100 (all 14 misses that one
    # phrasing) and 99/100 in six wordings written after training (probe.py --phrasings). The held-out miss was
    # the verb: `Hey, type 724 …` -> 524, `Hey, write 724 …` right; half the composed imperatives with a typing verb
    # (`typed`, so that eval phrasing's verb is no longer unseen) -> 100/100, and 119/120 in 40 wordings written
    # blind by someone who never saw the templates (118/120 before; phrasings/number_to_words_blind.txt)
    "number_to_words": [
        {"lr": 1e-3, "steps": 100, "fresh": True, "wrapped": True},
        {"lr": 1e-3, "steps": 100, "fresh": True, "composed": True},
        {"lr": 5e-4, "steps": 100, "fresh": True, "composed": True, "typed": True},
    ],
}
# the decoding each skill bundle declares (manifest `sampling`): greedy with no repetition penalty, as `eval tasks`
# measured it; a worked answer repeats its digits, and sampling or a penalty changes them (4821 - 377: 4524 / 4244)
SAMPLING = {"temperature": 0.0, "repetition_penalty": 1.0}
# `train-token --negatives`: requests that look like a skill's and are not, written by its provider. The digits ->
# words token, trained on `Write N in words`-style queries, otherwise took an everyday `Write …` request (1 of 30)
NEGATIVES = {"number_to_words": ROOT / "recipes" / "skills" / "negatives" / "number_to_words.jsonl"}
MMLU_DISTRACTORS = 120
TAU = 10.0  # nats, summed over the response: the worked answers are long, so expertise shows as tens of nats


def prepare(work: Path, seed: int, mmlu: Path, skills: list[str]) -> dict:
    from etr_hub.eval.mmlu import MMLU_EXPERT_SUBJECTS, pick_distractors, read_mmlu_dir, render_query, render_response

    pool, eval_rows = [], []
    for skill in SKILLS:
        for split, n in SIZES.items():
            rows = generate(skill, split, n, seed, style=None if split == "train" else answer_style(skill))
            write_jsonl(work / "data" / split / f"{skill}.jsonl", rows)
            if split == "pool":
                pool += [{"query": r["query"], "response": r["response"], "label": skill} for r in rows]
                pool += composed_pool(skill, rows, seed)
            if split == "eval" and skill in skills:  # eval.jsonl: the skills being built
                eval_rows += [
                    {"question": r["query"], "answer": r["answer"], "task": skill, "kind": r["kind"]} for r in rows
                ]
    write_jsonl(work / "eval.jsonl", eval_rows)
    questions = read_mmlu_dir(mmlu / "test").questions
    others = {
        s: [q for q in qs if len(render_query(q)) <= 500]
        for s, qs in questions.items()
        if s not in MMLU_EXPERT_SUBJECTS
    }
    picked = pick_distractors(
        others, MMLU_DISTRACTORS, seed=seed
    )  # the six MMLU experts' subjects stay out: their eval is elsewhere
    pool += [{"query": render_query(q), "response": render_response(q), "label": q.subject} for q in picked]
    write_jsonl(work / "pool_base.jsonl", pool)
    return {"pool_skills": len(pool) - len(picked), "pool_mmlu": len(picked), "eval": len(eval_rows)}


def answer_style(skill: str) -> str | None:
    """The style the skill's last phase answers in (generators.STYLES; None: the generator's own). Its pool rows
    are answered so, since the paper's rule compares losses on the response the expert writes; the first phase's
    training split keeps the generator's style, the one that phase is trained in."""
    return (LATER_PHASES.get(skill) or [{}])[-1].get("style")


def composed_pool(skill: str, plain: list[dict], seed: int) -> list[dict]:
    """More pool questions of a skill with a composer (generators.COMPOSED), asked in composed phrasings: its
    query set then covers more wordings than the templates, so its token generalises as the adapter does (the
    digits -> words token trained on template phrasings alone lost 27 of 100 held-out questions to
    electrical_engineering). Other problems than the plain pool's, never an eval one."""
    if skill not in COMPOSED:
        return []
    keys = {r["key"] for r in plain}
    rows = generate(skill, "pool", 2 * SIZES["pool"], seed, composed=True, style=answer_style(skill))
    fresh = [r for r in rows if r["key"] not in keys][: SIZES["pool"]]
    return [{"query": r["query"], "response": r["response"], "label": skill} for r in fresh]


def everyday_rows(work: Path, home: Path) -> list[dict]:
    """The project's everyday training prompts, answered by the meta model itself (greedy, cached)."""
    path = work / "everyday_answers.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    os.environ["ETR_HUB_HOME"] = str(home)
    from etr_hub.eval.tasks import generate_greedy
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.registry import Registry
    from etr_hub.session import ModelSession, read_general_prompts

    meta = ModelSession(Registry.open()).meta
    prompts = read_general_prompts(split="train")
    replies = generate_greedy(
        meta.model,
        meta.tokenizer,
        [routing_prompt_ids(meta.tokenizer, q)[0] for q in prompts],
        max_new_tokens=96,
        batch_size=8,
    )
    rows = [{"query": q, "response": r, "label": "everyday"} for q, r in zip(prompts, replies)]
    write_jsonl(path, rows)
    return rows


def phase_dirs(skill: str, work: Path) -> list[Path]:
    """Where each phase's adapter goes: WORK/adapters/<skill>.phase<i>, the last one WORK/adapters/<skill>."""
    later = len(LATER_PHASES.get(skill, []))
    return [work / "adapters" / f"{skill}.phase{i}" for i in range(1, later + 1)] + [work / "adapters" / skill]


def train_adapter(skill: str, work: Path, args) -> None:
    dirs = phase_dirs(skill, work)
    if finished(dirs[-1]) and not args.fresh:
        return
    if args.fresh:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    data = work / "data" / "train" / f"{skill}.jsonl"
    if not finished(dirs[0]):
        lora_run(data, dirs[0], LORA["lr"], EPOCHS[skill], STOP_AFTER[skill], args.seed, args.device)
    for i, phase in enumerate(LATER_PHASES.get(skill, []), start=2):
        if finished(dirs[i - 1]):
            continue
        if phase.get("fresh"):
            data = work / "data" / "train" / f"{skill}.phase{i}.jsonl"
            write_jsonl(data, phase_rows(skill, phase, args.seed + i - 1))
        init = ["--init-adapter", str(dirs[i - 2])]
        steps, seed = phase["steps"], args.seed + i - 1
        lora_run(data, dirs[i - 1], phase["lr"], epochs_for(steps), steps, seed, args.device, init)


def phase_rows(skill: str, phase: dict, seed: int) -> list[dict]:
    """A fresh phase's training rows: newly generated problems, half of them from the phase's `focus` sampler,
    with `wrapped` queries (tasks.wrap) or in `composed` phrasings (generators.COMPOSED), all answered in the
    phase's `style` if it has one (generators.STYLES)."""
    variant = {k: phase.get(k) for k in ("focus", "wrapped", "composed", "typed") if phase.get(k)}
    style = phase.get("style")
    if not variant:
        return generate(skill, "train", SIZES["train"], seed, style=style)
    half = SIZES["train"] // 2
    mixed = [r for v in ({}, variant) for r in generate(skill, "train", half, seed, style=style, **v)]
    random.Random(seed).shuffle(mixed)
    return mixed


def finished(adapter: Path) -> bool:
    """Trained to its last step (an interrupted run leaves train_state.json to resume from)."""
    return (adapter / "adapter_model.safetensors").exists() and not (adapter / "train_state.json").exists()


def lora_run(data, out, lr, epochs, stop_after, seed, device, extra=()) -> None:
    """One resumable train_lora.py run on `data`: a cosine over `epochs` that stops after `stop_after` steps."""
    cmd = [sys.executable, str(ROOT / "recipes" / "mmlu_experts" / "train_lora.py")]
    cmd += ["--data", str(data), "--out", str(out)]
    cmd += ["--r", str(LORA["r"]), "--alpha", str(LORA["alpha"]), "--targets", LORA["targets"]]
    cmd += ["--top-layers", str(LORA["top_layers"]), "--lr", str(lr), "--batch-size", str(LORA["batch_size"])]
    cmd += ["--epochs", str(epochs), "--seed", str(seed), "--device", device, "--save-every", "25", "--resume"]
    cmd += ["--stop-after", str(stop_after), *extra]
    # prompt + worked answer: the longest (a 3-digit by 2-digit product, ten numbers sorted) ~430 tokens
    cmd += ["--max-tokens", "480"]
    subprocess.run(cmd, check=True)


def query_set_args(cli: str, skill: str, work: Path, seed: int, skills: list[str]) -> list[str]:
    """`etr-hub query-set build` by the paper's rule over the one mixed pool, with the skill's adapter; the gap is
    taken against the best of the meta model and the other skill adapters (`--versus`), so that a short worked
    answer every adapter predicts well (`nine = 9`) goes to none of them but the one that knows it best."""
    build = [cli, "query-set", "build", skill, "--expert", str(work / "adapters" / skill)]
    build += [arg for other in skills if other != skill for arg in ("--versus", str(work / "adapters" / other))]
    pool = ["--data", str(work / "pool.jsonl"), "--tau", str(TAU), "--label", skill, "--size", "100"]
    return [*build, *pool, "--seed", str(seed), "--batch-size", "8", "--json"]


def skill_token_args(cli: str, skill: str, seed: int, out: Path) -> list[str]:
    """`etr-hub train-token SKILL` as the shipped skill bundles are trained, with the skill's NEGATIVES if any."""
    negatives = ["--negatives", str(NEGATIVES[skill])] if skill in NEGATIVES else []
    return [*train_token_args(cli, skill, seed, DESCRIPTIONS[skill], out), *negatives]


def later_phases(skill: str) -> str:
    phases = LATER_PHASES.get(skill, [])
    return "".join(
        f"; then {p['steps']} more steps from that adapter with a fresh cosine from lr {p['lr']:g}"
        + (", on newly generated problems" if p.get("fresh") else "")
        + (f" (half of them drawn by the `{p['focus']}` sampler)" if p.get("focus") else "")
        + (" (half of them asked with a greeting and a sign-off around the phrasing)" if p.get("wrapped") else "")
        + (" (half of them asked in phrasings composed from parts" if p.get("composed") else "")
        + (", half of those with a typing verb" if p.get("typed") else "")
        + (")" if p.get("composed") else "")
        + (f", answered in the `{p['style']}` style" if p.get("style") else "")
        + (
            f" ({STYLE_NOTES[p['style']]})"
            if p.get("style") and p["style"] not in [q.get("style") for q in phases[:i]]
            else ""
        )
        for i, p in enumerate(phases)
    )


def extra_negatives(skill: str) -> str:
    if skill not in NEGATIVES:
        return ""
    n = len(query_column(NEGATIVES[skill]))  # as train-token reads them
    return f", and {n} look-alike requests as negatives (`--negatives {NEGATIVES[skill].relative_to(ROOT)}`)"


def model_card(skill: str, manifest: dict, build: dict, skills: list[str]) -> str:
    qs, tr, negs = manifest.get("query_set", {}), manifest.get("training", {}), extra_negatives(skill)
    return f"""# {skill} expert (skills)

{DESCRIPTIONS[skill]}

- **Expert model:** a LoRA adapter (r={LORA["r"]} on every projection of the last {LORA["top_layers"]} decoder layers,
  float16) over the embedded meta model SmolLM2-135M-Instruct; it shares the meta model's weights.
- **Training data:** {SIZES["train"]:,} generated questions (`recipes/skills/tasks.py`, seeded), each answered in one
  worked, tutor-style format that ends with the result stated once; {STOP_AFTER[skill]} steps of batch
  {LORA["batch_size"]} ({STOP_AFTER[skill] * LORA["batch_size"]:,} examples seen),
  lr {LORA["lr"]:g}{later_phases(skill)}.
- **Query set:** {qs.get("size")} queries chosen by the paper's rule (loss gap > τ = {TAU:g} nats,
  against the better of the meta model and the other skill experts built with it) from one mixed pool of
  the {len(SKILLS)} generated skills' questions, MMLU questions and everyday prompts; purity {build.get("purity")}.
- **Expert token:** trained with `etr-hub train-token` ({tr.get("epochs")} epochs, {tr.get("stopped")}) in a registry
  holding {", ".join(tr.get("negatives") or []) or "no other expert"} (their query sets as negatives){negs}.
- **Decoding:** the manifest declares greedy decoding with no repetition penalty (`sampling`), as it was measured;
  chat and serve use it unless a request sets its own.
- **Evaluation:** see the README's "Skill experts" (`etr-hub eval tasks`).
- **Base model:** SmolLM2-135M-Instruct, Apache-2.0. **Data:** generated by this project, Apache-2.0.
- **Rebuild:** `python recipes/skills/build.py --seed 0 --skills {",".join(skills)}`
"""


def main() -> None:
    ap = argparse.ArgumentParser(description="Build the skill experts (--skills) into plugins/.")
    ap.add_argument("--work", type=Path, default=ROOT / ".work" / "skills")
    ap.add_argument("--plugins", type=Path, default=ROOT / "plugins")
    ap.add_argument("--mmlu", type=Path, default=ROOT.parent / "shared" / "data" / "mmlu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skills", default=",".join(SKILLS))
    ap.add_argument("--fresh", action="store_true", help="retrain adapters that already exist")
    ap.add_argument("--data-only", action="store_true", help="only write the generated data and WORK/eval.jsonl")
    ap.add_argument(
        "--eval",
        type=int,
        default=SIZES["eval"],
        help="evaluation questions per skill (the first N of the seeded eval split)",
    )
    args = ap.parse_args()
    SIZES["eval"] = args.eval
    work, cli, log = args.work.resolve(), etr_hub(), []
    skills = [s for s in args.skills.split(",") if s]
    t_start = time.perf_counter()
    counts = prepare(work, args.seed, args.mmlu, skills)
    print("data:", json.dumps(counts), flush=True)
    if args.data_only:
        return
    home = work / "home"
    run([cli, "init"], home, log)
    for skill in skills:
        t0 = time.perf_counter()
        train_adapter(skill, work, args)
        log.append({"cmd": f"train_lora.py {skill}", "seconds": round(time.perf_counter() - t0, 1)})
    pool = [json.loads(line) for line in (work / "pool_base.jsonl").read_text().splitlines() if line.strip()]
    write_jsonl(work / "pool.jsonl", pool + everyday_rows(work, home))
    builds = {skill: run(query_set_args(cli, skill, work, args.seed, skills), home, log) for skill in skills}
    # train-token freezes every registered token and learns against its query set: start from the six shipped
    # MMLU experts only (their query sets become negatives, so a skill token learns not to take their questions)
    for expert in run([cli, "expert", "list", "--json"], home, log) or []:
        run([cli, "expert", "remove", expert["name"], "--yes"], home, log)
    run([cli, "expert", "add", *(str(args.plugins / s) for s in MMLU_EXPERT_SUBJECTS), "--no-report"], home, log)
    for skill in skills:
        run(skill_token_args(cli, skill, args.seed, work / "bundles" / skill), home, log)
        dest = args.plugins / skill
        run([cli, "expert", "export", skill, str(dest), "--replace"], home, log)
        manifest = json.loads((dest / "expert.json").read_text())
        add_model_card(dest, model_card(skill, manifest, builds[skill] or {}, skills), sampling=SAMPLING)
    summary = {
        "seed": args.seed,
        "data": counts,
        "seconds": round(time.perf_counter() - t_start, 1),
        "steps": log,
        "query_sets": {
            s: {k: (builds[s] or {}).get(k) for k in ("size", "tau", "purity", "in_domain_gap", "out_of_domain_gap")}
            for s in builds
        },
    }
    (work / "build_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("seconds", "query_sets")}, indent=2))


if __name__ == "__main__":
    main()

r"""Measure the skills table and plug-and-play across the two families of shipped experts.

    python recipes/skills/plug_and_play.py [--work .work/skills] [--mmlu-work .work/mmlu] [--part all|skills|mmlu]

Every step is the project's own commands, in fresh registries (`WORK/pnp/<home>`) that share one
cache folder with build.py's registry (WORK/home/cache), so a forward pass or a generation is paid
once across them:

 - `skills`: the shipped skill bundles added with `expert add`; `eval tasks` (all baselines,
   the plot) -> WORK/eval_skills.json, docs/skills.png. Then the six MMLU bundles are added after
   them (the reverse order) -> `eval tasks` and `eval mmlu` with all of them.
 - `mmlu`: the six MMLU bundles added -> `eval mmlu` with six experts. Then the skills join the
   way a provider adds one: `query-set build` (the paper's rule over the same mixed pool, with
   build.py's adapters, so its loss passes come from the cache) and `train-token` in this
   registry, with the six MMLU tokens frozen and their query sets as negatives -> `eval tasks`,
   `eval mmlu` with all of them.

`recipes/skills/report.py` prints the README's tables from the JSON files written here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from etr_hub.eval.mmlu import MMLU_EXPERT_SUBJECTS as MMLU
from recipes.mmlu_experts.build import etr_hub, run
from recipes.skills.build import query_set_args, skill_token_args
from recipes.skills.tasks import SKILLS


def fresh_home(work: Path, name: str, cli: str, log: list[dict]) -> Path:
    """A new registry under WORK/pnp/NAME whose cache is build.py's (WORK/home/cache)."""
    home = work / "pnp" / name
    if home.exists():
        shutil.rmtree(home)  # the cache inside is a link: rmtree removes the link, not the cache
    (work / "home" / "cache").mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True)
    (home / "cache").symlink_to(work / "home" / "cache")
    run([cli, "init"], home, log)
    return home


def save(report: dict | None, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}", flush=True)


@dataclass
class Run:
    """What both registration orders share: the folders, the console script, the commands, the log."""

    work: Path
    cli: str
    plugins: Path
    skills: list[str]
    tasks: list[str]
    mmlu: list[str]
    seed: int
    log: list[dict] = field(default_factory=list)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".work" / "skills")
    ap.add_argument("--mmlu-work", type=Path, default=ROOT / ".work" / "mmlu")
    ap.add_argument("--plugins", type=Path, default=ROOT / "plugins")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--part",
        choices=["all", "skills", "mmlu"],
        default="all",
        help="only the skills-first registry (the skills table, the plot) or only the MMLU-first one",
    )
    args = ap.parse_args()
    work, cli = args.work.resolve(), etr_hub()
    dev = args.mmlu_work.resolve() / "dev_eval"
    if not dev.is_dir():  # the MMLU recipe's development-evaluation split (data only, seconds)
        recipe = [sys.executable, str(ROOT / "recipes" / "mmlu_experts" / "build.py"), "--work", str(args.mmlu_work)]
        data = ["--data", str(ROOT.parent / "shared" / "data" / "mmlu"), "--seed", str(args.seed)]
        subprocess.run([*recipe, *data, "--data-only"], check=True)
    # 400 new tokens: the longest worked answer (a 3-digit by 2-digit product, each carry added apart) is ~395
    tasks = [cli, "eval", "tasks", "--data", str(work / "eval.jsonl"), "--max-new-tokens", "400", "--json"]
    mmlu = [cli, "eval", "mmlu", "--data-dir", str(dev), "--json"]
    plugins = args.plugins.resolve()
    skills = [s for s in SKILLS if (plugins / s / "expert.json").is_file()]  # the shipped ones

    r = Run(work, cli, plugins, skills, tasks, mmlu, args.seed)
    if args.part in ("all", "skills"):
        skills_first(r)
    if args.part in ("all", "mmlu"):
        mmlu_first(r)
    (work / "pnp" / f"log_{args.part}.json").write_text(json.dumps(r.log, indent=2))


def skills_first(r: Run) -> None:
    """The shipped skill tokens added first (the skills table and the plot), then the six MMLU experts."""
    home = fresh_home(r.work, "skills", r.cli, r.log)
    run([r.cli, "expert", "add", *(str(r.plugins / s) for s in r.skills), "--no-report"], home, r.log)
    save(run([*r.tasks, "--plot", str(ROOT / "docs" / "skills.png")], home, r.log), r.work / "eval_skills.json")
    run([r.cli, "expert", "add", *(str(r.plugins / s) for s in MMLU), "--no-report"], home, r.log)
    save(run([*r.tasks, "--no-baselines"], home, r.log), r.work / "eval_tasks_all_skills_first.json")
    save(run([*r.mmlu, "--no-baselines"], home, r.log), r.work / "eval_mmlu_all_skills_first.json")


def mmlu_first(r: Run) -> None:
    """The six MMLU experts first, then each skill's query set built and its token trained in this registry."""
    home = fresh_home(r.work, "mmlu", r.cli, r.log)
    run([r.cli, "expert", "add", *(str(r.plugins / s) for s in MMLU), "--no-report"], home, r.log)
    save(run([*r.mmlu, "--no-baselines"], home, r.log), r.work / "eval_mmlu_six.json")
    for skill in r.skills:
        run(query_set_args(r.cli, skill, r.work, r.seed, r.skills), home, r.log)  # as build.py did
        out = r.work / "pnp" / "bundles" / skill
        run(skill_token_args(r.cli, skill, r.seed, out), home, r.log)
    save(run([*r.tasks, "--no-baselines"], home, r.log), r.work / "eval_tasks_all_mmlu_first.json")
    save(run([*r.mmlu, "--no-baselines"], home, r.log), r.work / "eval_mmlu_all_mmlu_first.json")


if __name__ == "__main__":
    main()

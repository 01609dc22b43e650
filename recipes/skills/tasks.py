"""Generated skill questions and tutor-style answers for the skill experts: the four the project set
out to build (arithmetic, sorting, Roman numerals, base conversion) and the two number-words skills
that replace the two that missed their target (words -> digits, digits -> words).

    python recipes/skills/tasks.py --out .work/skills/data --seed 0

Each skill is a module in `generators/`: a problem generator (`sample`: a random problem, its
canonical key and its gold answer), the phrasings people type (`TEMPLATES`) and one worked answer
style that ends with the result stated once. Splits are by problem, not by row: a problem's
canonical key (e.g. `add:4821:377`) hashes to `train`, `pool` or `eval`, so no problem appears in
two splits whatever the seed or the phrasing. The eval split also uses phrasings held out of training (the last
`HELD_OUT` templates of each skill), so eval measures new wording as well as new numbers.

Gold formats (what `etr-hub eval tasks` compares after extraction): integers in plain digits with
an optional minus sign; sorted lists joined by ", "; Roman numerals in capitals; binary and hex as
bare digits, hex in capitals; number words in lower case (`forty-eight thousand two hundred`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository root holds `recipes`

from recipes.skills.generators import COMPOSED, FOCUS, GENERATORS, STYLES
from recipes.skills.generators.common import HELD_OUT, Problem, fmt
from recipes.skills.generators.sorting import list_text

SKILLS = tuple(GENERATORS)
SPLITS = {"train": range(0, 80), "pool": range(80, 90), "eval": range(90, 100)}  # % of problem-key hashes


def split_of(key: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return next(name for name, r in SPLITS.items() if bucket in r)


# greetings and sign-offs people put around a request, for a later training phase (build.py's `wrapped`): a small
# adapter ties its skill to the wordings it saw ("Hey, type 9,301 as words please" made number_to_words read 591)
LEAD_INS = (
    "Hey, ",
    "hey ",
    "Hi! ",
    "Hello, ",
    "Hi there. ",
    "Quick question: ",
    "OK so ",
    "Sorry to bother you, ",
    "Good morning! ",
    "yo ",
    "Excuse me, ",
    "One more thing: ",
    "Hmm, ",
    "Dear assistant, ",
)
GREETINGS = {"hi", "hey", "hello"}  # a phrasing that starts with one gets no lead-in
SIGN_OFFS = ("", "", " please", " Please.", " thanks", " Thanks!", " thank you :)", " Cheers.", " ty", " asap")


def wrap(query: str, rng: random.Random) -> str:
    """A query as a person might pad it: a greeting or lead-in before it unless it has one (the request's first
    letter lowered, as one types mid-sentence), and a sign-off after it most of the time."""
    greeted = query.split(" ", 1)[0].strip("!,.").lower() in GREETINGS
    lead = "" if greeted else rng.choice(LEAD_INS)
    body = query[0].lower() + query[1:] if query[:1].isalpha() and not query.startswith("I ") else query
    return lead + body + rng.choice(SIGN_OFFS)


SEPARATORS = {"to_hex": 0.2, "to_words": 0.3}  # how often a form's number is typed with thousands separators


def render(problem: Problem, template: str, rng: random.Random) -> str:
    s = problem.slots
    if "nums" in s:
        return template.format(list=list_text(s["nums"], rng))
    if "a" in s:
        return template.format(a=fmt(s["a"], rng), b=fmt(s["b"], rng))
    if "n" in s:
        return template.format(
            n=fmt(s["n"], rng, sep_p=SEPARATORS.get(problem.form, 0.0)) if problem.form != "to_roman" else s["n"]
        )
    return template.format(**s)


def generate(
    skill: str,
    split: str,
    count: int,
    seed: int,
    focus: str | None = None,
    wrapped: bool = False,
    composed: bool = False,
    typed: bool = False,
    style: str | None = None,
) -> list[dict]:
    """`count` rows of one skill in one split: {query, response, answer, task, kind, label, key}; `focus` draws
    the problems from one of the skill's FOCUS samplers instead (same split by key, so still never an eval one);
    `wrapped` pads each query with a lead-in and a sign-off (`wrap`); `composed` asks in a phrasing composed from
    parts (generators.COMPOSED; training only), half of them wrapped; `typed` (with `composed`) asks half its
    imperatives with a typing verb; `style` answers in another style (generators.STYLES; the same problems and
    queries, only the responses change)."""
    if typed and not composed:
        raise ValueError("typed phrasings are composed ones: pass composed=True as well")
    if composed and split == "eval":
        raise ValueError("composed phrasings are for training: eval asks in the held-out templates")
    sample, templates = GENERATORS[skill]
    sample = FOCUS[skill][focus] if focus else sample
    variant = (f":{focus}" if focus else "") + (":wrapped" if wrapped else "") + (":composed" if composed else "")
    variant += ":typed" if typed else ""
    rng = random.Random(f"{skill}:{split}:{seed}{variant}")
    rows, seen = [], set()
    tries = 0
    while len(rows) < count:
        tries += 1
        if tries > 200 * count + 10_000:
            raise RuntimeError(f"{skill}/{split}: ran out of distinct problems after {len(rows)}")
        p = sample(rng)
        if p.key in seen or split_of(p.key) != split:
            continue
        seen.add(p.key)
        p = STYLES[skill][style](p) if style else p
        family = templates[p.form]
        usable = family[-HELD_OUT:] if split == "eval" else family[:-HELD_OUT]
        query = render(p, COMPOSED[skill](rng, p, typed) if composed else rng.choice(usable), rng)
        query = wrap(query, rng) if wrapped or (composed and rng.random() < 0.5) else query
        rows.append(
            {
                "query": query,
                "response": p.response,
                "answer": p.answer,
                "task": skill,
                "kind": p.kind,
                "label": skill,
                "key": p.key,
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description="Write train/pool/eval JSONL for every skill.")
    ap.add_argument("--out", type=Path, default=Path(".work/skills/data"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=4000, help="training rows per skill")
    ap.add_argument("--pool", type=int, default=60, help="query-pool rows per skill")
    ap.add_argument("--eval", type=int, default=100, help="evaluation rows per skill")
    args = ap.parse_args()
    for skill in SKILLS:
        for split, n in (("train", args.train), ("pool", args.pool), ("eval", args.eval)):
            write_jsonl(args.out / split / f"{skill}.jsonl", generate(skill, split, n, args.seed))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

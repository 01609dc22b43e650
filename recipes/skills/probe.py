r"""Exact-match accuracy of one skill adapter (or the meta model) on a skill's generated questions,
before any token exists: the oracle-expert figure of `etr-hub eval tasks`, straight from the adapter.

    python recipes/skills/probe.py --adapter .work/skills/adapters/roman \
        --data .work/skills/data/eval/roman.jsonl [--limit 50]

Greedy, batched (`etr_hub.eval.tasks.generate_greedy`), scored with the eval's extraction rules.
Without --adapter it scores the meta model alone. `--phrasings [FORM=]FILE` (one wording per line, with the
placeholders of `slots`: {a} {b}, {n}, {r}, {w}) re-asks each row's problem, read from its key (`add:4821:377`,
`to_words:4932`), in those wordings, in turn: new wording for the same problems. FORM limits a file to one
question form (the key's first field); repeat the option for several. E.g. recipes/skills/phrasings/:
number_to_words.txt, written after that adapter was trained, and the `*_blind.txt` files, written by someone who
never saw the generator's templates:

    python recipes/skills/probe.py --adapter .work/skills/adapters/arithmetic --data EVAL.jsonl \
        --phrasings add=recipes/skills/phrasings/arithmetic_add_blind.txt --phrasings sub=… --phrasings mul=…
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from etr_hub.eval.answers import to_roman
from recipes.skills.generators.number_to_words import canonical_words


def typed(n: int, i: int, separators: bool = True) -> str:
    """A number as people type it: with thousands separators every third time."""
    return f"{n:,}" if separators and abs(n) >= 1000 and i % 3 == 0 else str(n)


def slots(key: str, i: int) -> dict[str, str]:
    """The placeholders a new wording may use, from a row's canonical key (`add:4821:377`, `to_words:4932`,
    `to_roman:1994`, `from_roman:1994`, `words:4932`): {a} {b}, {n}, {r} (the numeral), {w} (the number in words)."""
    form, *fields = key.split(":")
    if form in ("add", "sub", "mul"):
        return {"a": typed(int(fields[0]), i), "b": typed(int(fields[1]), i + 1)}
    n = int(fields[-1])
    return {"n": typed(n, i, separators=form != "to_roman"), "r": to_roman(n), "w": canonical_words(n)}


def rephrase(rows: list[dict], phrasings: dict[str | None, list[str]]) -> list[dict]:
    """Each row asked in the next wording of its question form (the key's first field; None: any form); rows of a
    form with no wording are left out."""
    out, asked = [], {}
    for r in rows:
        form = r["key"].split(":")[0]
        templates = phrasings.get(form) or phrasings.get(None)
        if not templates:
            continue
        i = asked[form] = asked.get(form, -1) + 1
        out.append({**r, "query": templates[i % len(templates)].format(**slots(r["key"], i))})
    return out


def read_phrasings(specs: list[str]) -> dict[str | None, list[str]]:
    """`--phrasings FILE` (every row) or `--phrasings FORM=FILE` (rows of that form: add, sub, to_roman …)."""
    out: dict[str | None, list[str]] = {}
    for spec in specs:
        form, _, path = spec.rpartition("=")
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        out.setdefault(form or None, []).extend(t for t in lines if t.strip())
    return out


def by_form(rows: list[dict], ok: list[bool]) -> dict[str, list[int]]:
    """[right, asked] per question form (the key's first field: add, sub, mul, to_roman …)."""
    out: dict[str, list[int]] = {}
    for r, good in zip(rows, ok):
        tally = out.setdefault(r["key"].split(":")[0], [0, 0])
        tally[0] += good
        tally[1] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--adapter", type=Path, help="a PEFT adapter over the embedded meta model (default: the meta model alone)"
    )
    ap.add_argument(
        "--data", type=Path, required=True, help="rows with query/answer/kind (recipes/skills/tasks.py output)"
    )
    ap.add_argument("--limit", type=int, default=0, help="only the first N rows")
    ap.add_argument(
        "--phrasings",
        action="append",
        default=[],
        help="[FORM=]FILE of wordings with {n}, {a} {b}, {r} or {w}, one per line: re-ask each row's problem",
    )
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--show", type=int, default=3, help="print this many wrong replies")
    args = ap.parse_args()

    from etr_hub.eval.answers import is_correct
    from etr_hub.eval.tasks import generate_greedy
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.models.refs import ModelRef

    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    if args.phrasings:
        rows = rephrase(rows, read_phrasings(args.phrasings))
    meta = load_causal_lm(ModelRef.parse("embedded:smollm2-135m-instruct"), role="meta")
    model = load_causal_lm(ModelRef.parse(f"peft:{args.adapter}"), meta=meta) if args.adapter else meta
    t0 = time.perf_counter()
    prompts = [routing_prompt_ids(model.tokenizer, r["query"])[0] for r in rows]
    replies = generate_greedy(
        model.model, model.tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    ok = [is_correct(reply, r["answer"], r["kind"]) for reply, r in zip(replies, rows)]
    for reply, r, good in zip(replies, rows, ok):
        if not good and args.show > 0:
            args.show -= 1
            print(f"--- {r['query']!r} (gold {r['answer']})\n{reply}", file=sys.stderr)
    print(
        json.dumps(
            {
                "adapter": str(args.adapter) if args.adapter else None,
                "data": str(args.data),
                "n": len(rows),
                "exact_match": sum(ok) / len(rows),
                "correct": sum(ok),
                "by_form": by_form(rows, ok),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()

r"""Exact-match accuracy of one skill adapter (or the meta model) on a skill's generated questions,
before any token exists: the oracle-expert figure of `etr-hub eval tasks`, straight from the adapter.

    python recipes/skills/probe.py --adapter .work/skills/adapters/roman \
        --data .work/skills/data/eval/roman.jsonl [--limit 50]

Greedy, batched (`etr_hub.eval.tasks.generate_greedy`), scored with the eval's extraction rules.
Without --adapter it scores the meta model alone. `--phrasings FILE` (one template with `{n}` per line) re-asks
each row's number (the last field of its key, e.g. `to_words:4932`) in those wordings, in turn: new wording for
the same problems, e.g. recipes/skills/phrasings/number_to_words.txt, written after the adapter was trained, or
number_to_words_blind.txt, 40 wordings written by someone who never saw the generator's templates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def rephrase(rows: list[dict], templates: list[str]) -> list[dict]:
    """Each row asked in the next template, its number as typed: with thousands separators every third time."""
    out = []
    for i, r in enumerate(rows):
        n = int(r["key"].rsplit(":", 1)[1])
        typed = f"{n:,}" if n >= 1000 and i % 3 == 0 else str(n)
        out.append({**r, "query": templates[i % len(templates)].format(n=typed)})
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
    ap.add_argument("--phrasings", type=Path, help="templates with {n}, one per line: re-ask each row's number")
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
        rows = rephrase(rows, [t for t in args.phrasings.read_text(encoding="utf-8").splitlines() if t.strip()])
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
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()

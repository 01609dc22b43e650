"""Benchmark: query-set builds and train-token against the forward passes they stand in for.

Measured side by side in one run on the embedded default meta model (SmolLM2-135M-Instruct):

  A = train-token wall time after model load (query set built, so its routing states are cached)
      / one no-grad forward pass of the meta model over the same query set        target <= 1.2
  B = second `query-set build` over the same dataset (another expert)
      / one no-grad forward pass of that expert over the dataset                   target <= 1.1

The official ETR code runs the meta model over the query set every epoch (A >= 5 at 5 epochs).
Usage: python benchmarks/bench_train.py [--rows 300] [--home DIR]   (data: ../shared/data/mmlu)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import tempfile
import time
from pathlib import Path

MMLU = Path(__file__).resolve().parents[2] / "shared" / "data" / "mmlu" / "test"
SUBJECTS = ("astronomy", "prehistory", "international_law", "high_school_biology", "world_religions", "marketing")


def dataset(path: Path, rows: int) -> Path:
    """MMLU questions as (query, answer text) pairs, labelled by subject."""
    out = []
    for subject in SUBJECTS:
        with open(MMLU / f"{subject}_test.csv", newline="", encoding="utf-8") as f:
            for r in csv.reader(f):
                out.append({"query": r[0], "response": r[1 + "ABCD".index(r[5])], "label": subject})
    random.Random(0).shuffle(out)
    path.write_text("".join(json.dumps(r) + "\n" for r in out[:rows]))
    return path


def random_lora(base, out: Path, seed: int) -> Path:
    """A LoRA adapter with random non-zero weights: any expert costs the same to run."""
    import torch
    from peft import LoraConfig, get_peft_model

    from etr_hub.models.loading import share_weights

    model = get_peft_model(share_weights(base), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    model.save_pretrained(out)
    return out


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=300, help="dataset size (query sets are at most 100, as in the paper)")
    ap.add_argument("--home", type=Path, default=None, help="ETR_HUB_HOME to use (default: a temporary copy of yours)")
    args = ap.parse_args()
    import torch

    from etr_hub.config import settings
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.models.refs import ModelRef
    from etr_hub.models.scoring import encode_pairs, routing_states, score_pairs
    from etr_hub.queryset.build import QuerySetSpec, SelectionRule, build_query_set
    from etr_hub.registry import Registry
    from etr_hub.registry.meta import DEFAULT_META, register_meta_model
    from etr_hub.session import ModelSession
    from etr_hub.training.train_token import train_token

    tmp = Path(tempfile.mkdtemp(prefix="etr-bench-train-"))
    user_models = settings().models_dir  # reuse an already converted default meta model
    os.environ["ETR_HUB_HOME"] = str(args.home or tmp / "home")
    if args.home is None and user_models.is_dir():
        (tmp / "home").mkdir()
        os.symlink(user_models, tmp / "home" / "models")
    reg = Registry.open()
    print(f"threads {torch.get_num_threads()}, preparing the embedded default meta model…", flush=True)
    register_meta_model(reg, ModelRef.parse(DEFAULT_META))
    session = ModelSession(reg)
    meta = session.meta  # loaded once; nothing below is a model load of the meta model
    data = dataset(tmp / "pool.jsonl", args.rows)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    experts = [random_lora(meta.model, tmp / f"expert-{k}", seed=k) for k in range(2)]

    # 1) the first build pays for the meta pass (and caches its losses and routing states)
    t_first, first = timed(
        lambda: build_query_set(
            reg,
            QuerySetSpec("astronomy", str(experts[0]), data),
            SelectionRule(rule="labelled", label="astronomy"),
            session=session,
        )
    )

    # 2) one expert forward pass over the dataset, no cache (the denominator of B) ...
    expert = load_causal_lm(ModelRef.parse(str(experts[1])), meta=meta)
    pairs = encode_pairs(expert.tokenizer, [r["query"] for r in rows], [r["response"] for r in rows])
    t_expert, _ = timed(lambda: score_pairs(expert.model, expert.tokenizer, pairs, batch_size=8))
    # ... side by side with the second build over the same dataset, another expert (the numerator)
    t_second, _ = timed(
        lambda: build_query_set(
            reg,
            QuerySetSpec("prehistory", str(experts[1]), data),
            SelectionRule(rule="labelled", label="prehistory"),
            session=session,
        )
    )

    # 3) one meta forward pass over the query set, no cache (the denominator of A) ...
    queries = [first.dataset.rows[i]["query"] for i in first.selected]
    t_meta_qs, _ = timed(lambda: routing_states(meta.model, meta.tokenizer, queries))
    # ... side by side with train-token after model load (states cached by the build; the project's
    # everyday prompts are computed on first use, once per meta model: train one token to warm them)
    train_token(reg, "prehistory", session=session)
    t_train, result = timed(lambda: train_token(reg, "astronomy", session=session))

    print(
        f"rows {len(rows)}; query set {len(queries)} queries (+{result.n_negatives} negatives); "
        f"token: {result.outcome.epochs} epochs, {result.outcome.steps} steps, {result.outcome.stopped}"
    )
    print(f"first query-set build (meta + expert pass)          {t_first:7.2f} s")
    print(f"one expert forward pass over the dataset            {t_expert:7.2f} s")
    print(f"second query-set build (meta losses cached)         {t_second:7.2f} s")
    print(f"one meta forward pass over the query set            {t_meta_qs:7.2f} s")
    print(f"train-token after model load                        {t_train:7.2f} s")
    print(
        f"ratio A train-token / meta pass over query set      {t_train / t_meta_qs:7.3f}   "
        "(target <= 1.2; official ETR code >= 5)"
    )
    print(f"ratio B second build / one expert pass              {t_second / t_expert:7.3f}   (target <= 1.1)")


if __name__ == "__main__":
    main()

"""The admission report's routing math vs the one matmul per query it needs (issue 14: ≤ 1.2×).

    python benchmarks/bench_admission.py [--queries 20000] [--experts 6] [--hidden 576] [--reps 21] [--threads 1]

With the routing states cached (ModelSession.routing_states reads them; no meta pass), the report's
cost is `admission_winners`: h @ [W_E; e]ᵀ + b, the top word logit, two argmaxes. This times it next
to the bare matmul h @ [W_E; e]ᵀ on synthetic states of SmolLM2-135M's width, the median of paired
repetitions in rotating order, and prints the ratio (wall time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from etr_hub.routing.math import admission_winners


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=20000)
    p.add_argument("--experts", type=int, default=6)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--reps", type=int, default=21)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(a.queries, a.hidden, generator=g)  # (B, C)
    top = torch.randn(a.queries, generator=g) + 10  # (B,) the top word logit
    lse = top + 1  # (B,)
    bias = torch.zeros(a.experts)  # (N,)
    w_e, row = torch.randn(a.experts, a.hidden, generator=g), torch.randn(1, a.hidden, generator=g)

    def matmul() -> None:
        h @ torch.cat([w_e, row]).T  # (B, C) @ (C, N + 1)

    def report() -> None:
        admission_winners((h, lse, top), w_e, bias, row)

    runs: dict[str, list[float]] = {"matmul": [], "report": []}
    for rep in range(a.reps + 1):
        for name, fn in (("matmul", matmul), ("report", report))[:: 1 if rep % 2 else -1]:
            t = time.perf_counter()
            fn()
            if rep:  # the first repetition warms up
                runs[name].append(time.perf_counter() - t)
    ratios = [r / m for r, m in zip(runs["report"], runs["matmul"])]
    print(f"{a.queries} queries, {a.experts}+1 experts, hidden {a.hidden}, {a.threads} thread(s), {a.reps} reps")
    for name, times in runs.items():
        print(f"  {name:7s} median {statistics.median(times) * 1e3:.2f} ms")
    print(f"report / matmul: {statistics.median(ratios):.2f}x (target ≤ 1.2x)")


if __name__ == "__main__":
    main()

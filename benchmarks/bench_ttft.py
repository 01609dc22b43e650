"""Time from `etr-hub chat --once TEXT` start to the first streamed token, and what it is spent on.

    python benchmarks/bench_ttft.py [--reps 5] [--experts 6]

On the registry's meta model (the embedded default SmolLM2-135M-Instruct after `etr-hub init`),
in a throw-away copy of $ETR_HUB_HOME with `--experts` LoRA experts registered (random r=8 q/v
adapters whose tokens never win; 0 for none). Each repetition starts the real console script in
a fresh process, `etr-hub chat --once TEXT --max-new-tokens 8`, and times the first byte of the
answer on its stdout (the answer streams there; markers and notes go to stderr) and the exit.

A second, in-process breakdown (also a fresh process per repetition) splits the same path into
interpreter start, `import torch, transformers`, the first Hub.open, a second Hub.open in the
same process (reading the registry, loading the meta model's weights, fingerprinting it and
assembling W_E, with every module already imported: the first open minus the second is the
import work transformers defers until a model class is used), and the first token (chat
template, prefill, first step). Medians are printed; the time to first token is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT = "Explain in a few paragraphs how the planets of the solar system formed."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--experts", type=int, default=6, help="LoRA experts registered (they load lazily, so they should cost little)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return

    from etr_hub.config import settings

    source = settings().home
    work = Path(tempfile.mkdtemp(prefix="etr-bench-ttft-"))
    try:
        parent(source, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def console_script() -> str:
    beside = Path(sys.executable).parent / "etr-hub"
    found = str(beside) if beside.is_file() else shutil.which("etr-hub")
    if not found:
        raise SystemExit("the etr-hub console script is not installed (pip install -e .)")
    return found


def parent(source: Path, work: Path, args) -> None:
    from rich.console import Console

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_decode import make_home
    from bench_memory import add_lora_experts

    console = Console(stderr=True)
    registry = make_home(source, work / "home")
    if args.experts:
        with console.status(f"registering {args.experts} LoRA experts"):
            add_lora_experts(registry, work / "bundles", args.experts)
    env = {**os.environ, "ETR_HUB_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    script = console_script()
    first, total = [], []
    with console.status("timing `etr-hub chat --once`"):
        for _ in range(args.reps):
            f, t = time_cli(script, env)
            first.append(f)
            total.append(t)
    phases: dict[str, list[float]] = {}
    with console.status("in-process breakdown"):
        for _ in range(args.reps):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
            phases.setdefault("interpreter start", []).append(time.perf_counter() - start)
            out = subprocess.run(
                [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=False
            )
            if out.returncode != 0:
                raise SystemExit(f"breakdown failed:\n{out.stderr[-2000:]}")
            for name, seconds in json.loads(out.stdout.strip().splitlines()[-1]).items():
                phases.setdefault(name, []).append(seconds)

    print(
        f"meta model {registry.require_meta().display}, {args.experts} LoRA experts registered, "
        f"{args.reps} fresh processes each"
    )
    print("breakdown (medians):")
    for name, values in phases.items():
        print(f"  {name:<38} {statistics.median(values):5.2f} s")
    print(f"`etr-hub chat --once` exit (8 new tokens): median {statistics.median(total):.2f} s")
    print(
        f"time to first streamed token, `etr-hub chat --once TEXT`: median {statistics.median(first):.2f} s "
        f"(min {min(first):.2f} s, max {max(first):.2f} s, {args.reps} runs)"
    )


def time_cli(script: str, env: dict) -> tuple[float, float]:
    """(seconds to the first stdout byte, seconds to exit) of one `etr-hub chat --once` process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [script, "chat", "--once", TEXT, "--max-new-tokens", "8"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    byte = proc.stdout.read(1)
    first = time.perf_counter() - start
    _, errors = proc.communicate()
    total = time.perf_counter() - start
    if proc.returncode != 0 or not byte:
        raise SystemExit(f"etr-hub chat failed (exit {proc.returncode}): {errors.decode()[-1000:]}")
    return first, total


def child() -> None:
    """The path `etr-hub chat --once` takes, with a clock between the phases."""
    marks = {}
    t = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    marks["import torch, transformers"] = time.perf_counter() - t
    from etr_hub.runtime import Hub, TextDelta

    t = time.perf_counter()
    Hub.open().close()
    first_open = time.perf_counter() - t
    t = time.perf_counter()
    hub = Hub.open()
    marks["Hub.open: registry, weights, W_E"] = time.perf_counter() - t
    marks["Hub.open: deferred imports"] = first_open - marks["Hub.open: registry, weights, W_E"]
    t = time.perf_counter()
    events = hub.chat([{"role": "user", "content": TEXT}], max_new_tokens=8, stream=True)
    next(e for e in events if isinstance(e, TextDelta))
    marks["first token: template, prefill, step"] = time.perf_counter() - t
    events.close()
    print(json.dumps(marks))


if __name__ == "__main__":
    main()

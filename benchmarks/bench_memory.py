"""Peak RSS with six LoRA experts loaded vs the meta model alone, each in a fresh process.

    python benchmarks/bench_memory.py [--new-tokens 64] [--experts 6] [--source plugins|random] [--threads 1]

On the registry's meta model (the embedded default SmolLM2-135M-Instruct after `etr-hub init`),
in throw-away copies of $ETR_HUB_HOME: one with no experts, one with six LoRA experts — the
bundles shipped in plugins/ (r=8 adapters on q_proj and v_proj) when they fit this meta model,
else (or with --source random) six random r=8 q/v adapters written as bundles through the
normal bundle code — registered through the registry. Each case runs in its own fresh process:

    meta-alone  Hub.open() + one chat answer of N tokens (the meta model: no experts)
    six-lora    Hub.open() + one answer of N tokens by each of the six LoRA experts
                (expert=NAME, so every adapter is loaded and used once) + one routed answer

and reports its peak resident set size (getrusage ru_maxrss: everything the process ever held
at once — Python, torch, the model, the experts, transient buffers). The ratio of the two is
printed last; target ≤ 1.1×.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTION = [{"role": "user", "content": "Explain in a few paragraphs how the planets of the solar system formed."}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared machine quiet)")
    parser.add_argument(
        "--source",
        choices=["plugins", "random"],
        default="plugins",
        help="the shipped plugins/ bundles (falls back to random adapters if they do not fit) or random adapters",
    )
    parser.add_argument("--child", choices=["meta-alone", "six-lora"], help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.child:
        child(args)
        return

    from etr_hub.config import settings

    source = settings().home
    work = Path(tempfile.mkdtemp(prefix="etr-bench-mem-"))
    try:
        parent(source, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def parent(source: Path, work: Path, args) -> None:
    from rich.console import Console

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_decode import make_home

    console = Console(stderr=True)
    make_home(source, work / "meta-alone")
    registry = make_home(source, work / "six-lora")
    used = add_plugins(registry, args.experts, console) if args.source == "plugins" else []
    if not used:
        shutil.rmtree(work / "six-lora")  # drop any plugin that did get in
        registry = make_home(source, work / "six-lora")
        with console.status(f"writing and registering {args.experts} random LoRA experts"):
            add_lora_experts(registry, work / "bundles", args.experts)
        used = [f"{args.experts} random r=8 q/v adapters"]
    print(f"experts: {', '.join(used)}")
    peaks = {}
    for case in ("meta-alone", "six-lora"):
        with console.status(f"{case}: fresh process"):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                case,
                "--home",
                str(work / case),
                "--new-tokens",
                str(args.new_tokens),
                "--threads",
                str(args.threads),
            ]
            env = {**os.environ, "ETR_HUB_HOME": str(work / case)}
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{case} failed:\n{out.stderr[-2000:]}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        peaks[case] = data["peak_rss_mb"]
        print(
            f"{case:>10}: peak RSS {data['peak_rss_mb']:.0f} MB, RSS at the end {data['rss_end_mb']:.0f} MB, "
            f"{data['answers']} answers in {data['seconds']:.1f} s, experts loaded: {data['experts_loaded']}"
        )
    ratio = peaks["six-lora"] / peaks["meta-alone"]
    print(
        f"peak RSS ratio, {args.experts} LoRA experts loaded / meta model alone: {ratio:.3f}× "
        f"(+{peaks['six-lora'] - peaks['meta-alone']:.0f} MB; target ≤ 1.1×) {'PASS' if ratio <= 1.1 else 'FAIL'}"
    )


def add_plugins(registry, n: int, console) -> list[str]:
    """Register the first n shipped MMLU LoRA bundles of plugins/; [] unless all n are there."""
    from etr_hub.errors import EtrHubError
    from etr_hub.eval.mmlu import MMLU_EXPERT_SUBJECTS

    root = Path(__file__).resolve().parent.parent / "plugins"  # the MMLU experts: r=8 q/v, as the README's figure
    shipped = [root / s for s in MMLU_EXPERT_SUBJECTS]
    folders = [p for p in shipped if (p / "expert.json").is_file() and (p / "adapter").is_dir()][:n]
    if len(folders) < n:
        console.print(f"plugins/ has {len(folders)} LoRA bundles, not {n}: using random adapters")
        return []
    try:
        for folder in folders:
            registry.add_expert(folder)
    except EtrHubError as exc:
        console.print(f"a plugin does not fit ({exc.problem}): using random adapters")
        return []
    return [f"plugins/{f.name}" for f in folders]


def add_lora_experts(registry, work: Path, n: int) -> None:
    """n random r=8 q/v adapters on the meta model, with small random token rows (they never win
    routing by themselves; the child names each expert once)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from etr_hub.bundle.io import write_token_bundle
    from etr_hub.bundle.manifest import MetaInfo
    from etr_hub.models.loading import load_causal_lm, share_weights
    from etr_hub.models.refs import ModelRef

    meta_row = registry.require_meta()
    meta = load_causal_lm(ModelRef.model_validate(meta_row.reference), role="meta")
    info = MetaInfo(
        reference=meta_row.display,
        hidden_size=meta_row.hidden_size,
        vocab_size=meta_row.vocab_size,
        fingerprint=meta_row.fingerprint,
    )
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        folder = work / f"lora{i}"
        peft_model = get_peft_model(
            share_weights(meta.model), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
        )
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
        peft_model.save_pretrained(folder / "adapter")
        bundle = write_token_bundle(
            folder / "bundle",
            torch.randn(1, meta_row.hidden_size, generator=gen) * 1e-3,
            files={"adapter": folder / "adapter"},
            name=f"lora-{i}",
            license="CC0-1.0",
            provider="bench",
            expert=ModelRef(kind="peft", path="adapter"),
            meta=info,
        )
        registry.add_expert(bundle)


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from etr_hub.runtime import Hub

    t0 = time.perf_counter()
    hub = Hub.open()
    answers = 0
    if args.child == "six-lora":
        assert len(hub.experts) >= 1 and all(e.backend == "lora" for e in hub.experts), (hub.experts, hub.skipped)
        for expert in hub.experts:
            result = hub.chat(QUESTION, max_new_tokens=args.new_tokens, expert=expert.name, ignore_eos=True)
            assert result.expert == expert.name and not result.warnings, result.warnings
            answers += 1
    hub.chat(QUESTION, max_new_tokens=args.new_tokens, ignore_eos=True)  # routed (a plugin expert may take it)
    answers += 1
    print(
        json.dumps(
            {
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
                "rss_end_mb": _rss_now_mb(),
                "answers": answers,
                "seconds": time.perf_counter() - t0,
                "experts_loaded": len(hub.pool.loaded),
            }
        )
    )


def _rss_now_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()

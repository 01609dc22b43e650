"""Decoding speed of routed generation vs plain `model.generate`, side by side in one run.

    python benchmarks/bench_decode.py [--new-tokens 128] [--reps 5] [--threads 1] [--no-speed] [--switch-reps N]
                                      [--device auto|cpu|cuda|cuda:N|mps] [--dtype auto|float32|bfloat16|float16]

On the registry's meta model (the embedded default SmolLM2-135M-Instruct after `etr-hub init`),
in throw-away copies of $ETR_HUB_HOME: one with 6 and one with 1,000 synthetic experts (random
rows small enough never to win, so all three runs produce the same greedy tokens; their
reference is an endpoint that is never contacted). Each repetition times, in rotating order:

    generate   model.generate(ids, greedy, eos disabled, N new tokens)
    routed-6   Hub.chat(messages, max_new_tokens=N, ignore_eos=True) with W_E of 6 rows,
               expert tokens competing at every step (route_window=None: Algorithm 1 as is,
               the most work; the default window of 1 routes at the first position only)
    routed-1000  the same with 1,000 rows

Then, with --switch (default on), a second phase times routed-6 next to two runs that measure
the cost of a switch as the paper's Table 5 does: one LoRA expert (the shipped plugins/astronomy
adapter: r=8 on q/v of the last 8 of 30 decoder layers; a random adapter of that shape if
plugins/ is absent) whose token wins at the first generated token, so the LoRA expert writes
all N tokens; its time over routed-6's (same prompt, same length, never switches) minus one is
the switch cost (target ≤ +1.7%):

    switch-cold  the expert's prefix cache is emptied first: it continues the meta model's
                 keys/values of the 22 unadapted layers and recomputes the prompt in the 8
                 adapted ones (generation/shared_prefix.py)
    switch-warm  its prefix cache holds another conversation (same system prompt, another
                 question), as on a hub where the expert has answered before: only the
                 question and the assistant header are left, in the adapted layers

Hub.chat does everything a chat answer does (chat template, routing over [W_V; W_E]·h every
step, incremental detokenizing, the event stream). The ratio reported is generate time / routed
time (speed ratio, higher is better), the median over paired repetitions; targets: ≥ 0.95 (6)
and ≥ 0.9 (1,000). Each ratio is given for wall time and for this process's CPU time: on a
machine shared with other work the CPU time is the steadier of the two (wall time also counts
the time other processes held the core). The ratios are printed last.

--device / --dtype place the meta model (and with it W_E and the LoRA expert) as `etr-hub chat
--device/--dtype` does (default: cpu, float32; benchmarks/gpu_check.sh runs it on a GPU). On a
GPU both runs wait for the device at every token (generate to check its stopping criteria, the
hub to read the chosen id), so wall times compare like for like; CPU time there is the host's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

QUESTION = [{"role": "user", "content": "Explain in a few paragraphs how the planets of the solar system formed."}]
OTHER = [{"role": "user", "content": "What is a black hole?"}]  # shares only the system prompt with QUESTION
GREEDY = {"temperature": 0.0, "repetition_penalty": 1.0}  # what model.generate does here (chat's defaults sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared machine quiet)")
    parser.add_argument("--experts", default="6,1000", help="comma-separated expert counts")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True, help="time routed vs generate")
    parser.add_argument(
        "--switch", action=argparse.BooleanOptionalAction, default=True, help="time a switch to a LoRA expert"
    )
    parser.add_argument("--switch-reps", type=int, default=0, help="repetitions of the switch timing (default: --reps)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default: cpu)")
    parser.add_argument("--dtype", default="float32", help="auto, float32, bfloat16 or float16 (default: float32)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    counts = [int(c) for c in args.experts.split(",")]

    from etr_hub.config import settings

    source = settings().home
    work = Path(tempfile.mkdtemp(prefix="etr-bench-"))
    try:
        run(source, work, counts, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_home(source: Path, home: Path):
    """A registry copy that shares the source's converted models (read-only) and nothing else."""
    from etr_hub.config import Settings
    from etr_hub.registry import Registry

    home.mkdir(parents=True)
    shutil.copyfile(source / "registry.db", home / "registry.db")
    if (source / "models").exists():
        (home / "models").symlink_to((source / "models").resolve())
    return Registry.open(Settings(home=home, database_url=f"sqlite:///{home / 'registry.db'}"))


def add_synthetic_experts(registry, n: int, hidden: int, meta_row, progress) -> None:
    """n bundles with small random rows (logits ≈ 0, far below the top word), written and
    registered through the normal bundle and registry code."""
    import torch

    from etr_hub.bundle.io import write_token_bundle
    from etr_hub.bundle.manifest import MetaInfo
    from etr_hub.models.refs import ModelRef

    gen = torch.Generator().manual_seed(n)
    ref = ModelRef(kind="openai", url="http://127.0.0.1:9/v1", model="never-called")
    meta = MetaInfo(
        reference=meta_row.display, hidden_size=hidden, vocab_size=meta_row.vocab_size, fingerprint=meta_row.fingerprint
    )
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            row = torch.randn(1, hidden, generator=gen) * 1e-3
            bundle = write_token_bundle(
                Path(tmp) / f"b{i}",
                row,
                name=f"synthetic-{i:04d}",
                license="CC0-1.0",
                provider="bench",
                expert=ref,
                meta=meta,
            )
            registry.add_expert(bundle)
            shutil.rmtree(Path(tmp) / f"b{i}")
            progress(1)


def add_switching_lora(registry, meta, meta_row, work: Path) -> str:
    """A LoRA expert on the meta model whose token wins at the routing position of QUESTION."""
    import torch
    from peft import LoraConfig, get_peft_model

    from etr_hub.bundle.io import write_token_bundle
    from etr_hub.bundle.manifest import MetaInfo
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.loading import share_weights
    from etr_hub.models.refs import ModelRef

    shipped = Path(__file__).resolve().parents[1] / "plugins" / "astronomy" / "adapter"
    if shipped.is_dir():
        shutil.copytree(shipped, work / "adapter")
    else:
        layers = meta.model.config.num_hidden_layers
        config = LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], layers_to_transform=list(range(layers - 8, layers))
        )
        peft_model = get_peft_model(share_weights(meta.model), config)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
        peft_model.save_pretrained(work / "adapter")
    with torch.no_grad():
        ids = torch.tensor([routing_prompt_ids(meta.tokenizer, QUESTION)[0]], device=meta.model.device)
        h = meta.model.get_decoder()(input_ids=ids).last_hidden_state[0, -1].float().cpu()  # (C,)
    bundle = write_token_bundle(
        work / "bundle",
        h * (100.0 / float(h @ h)),  # logit 100 there
        files={"adapter": work / "adapter"},
        name="switch-lora",
        license="CC0-1.0",
        provider="bench",
        expert=ModelRef(kind="peft", path="adapter"),
        meta=MetaInfo(
            reference=meta_row.display,
            hidden_size=meta_row.hidden_size,
            vocab_size=meta_row.vocab_size,
            fingerprint=meta_row.fingerprint,
        ),
    )
    registry.add_expert(bundle)
    return "switch-lora"


def run(source: Path, work: Path, counts: list[int], args) -> None:
    import torch
    from rich.console import Console
    from rich.progress import Progress
    from transformers import GenerationConfig

    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.models.refs import ModelRef
    from etr_hub.runtime import Hub

    console = Console(stderr=True)
    first = make_home(source, work / "base")
    meta_row = first.require_meta()
    console.print(
        f"meta model {meta_row.display}; torch threads {torch.get_num_threads()}; "
        f"{args.new_tokens} new tokens; {args.reps} reps"
    )
    with console.status("loading the meta model"):
        ref = ModelRef.model_validate(meta_row.reference)
        meta = load_causal_lm(ref, device=args.device, dtype=args.dtype, role="meta", fingerprint=True)
    console.print(f"device {meta.model.device}, dtype {meta.model.dtype}")
    hubs = {}
    with Progress(console=console) as bar:
        for n in counts:
            registry = make_home(source, work / f"n{n}")
            task = bar.add_task(f"registering {n} synthetic experts", total=n)
            add_synthetic_experts(registry, n, meta_row.hidden_size, meta_row, lambda k, t=task: bar.advance(t, k))
            hubs[n] = Hub.open(registry, meta=meta, route_window=None)  # experts compete at every step
            assert len(hubs[n].experts) == n, hubs[n].skipped[:3]

    if args.switch:
        (work / "lora").mkdir()
        registry = make_home(source, work / "switch")
        add_switching_lora(registry, meta, meta_row, work / "lora")
        hubs["switch"] = Hub.open(registry, meta=meta)

    model, tok = meta.model, meta.tokenizer
    ids = torch.tensor([routing_prompt_ids(tok, QUESTION)[0]], device=model.device)  # (1, T)
    config = GenerationConfig(
        max_new_tokens=args.new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )

    def plain() -> str:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    def routed(n: int):
        def call() -> str:
            result = hubs[n].chat(QUESTION, max_new_tokens=args.new_tokens, ignore_eos=True, **GREEDY)
            assert result.route == [] and result.completion_tokens == args.new_tokens, result.route
            return result.text

        return call

    def switching() -> str:
        result = hubs["switch"].chat(QUESTION, max_new_tokens=args.new_tokens, ignore_eos=True, **GREEDY)
        assert [(s.expert, s.token_index, s.fell_back) for s in result.route] == [("switch-lora", 0, False)], (
            result.route
        )
        assert result.completion_tokens == args.new_tokens
        return result.text

    def forget_prefix() -> None:  # untimed set-up of switch-cold
        hubs["switch"].pool.get("switch-lora").clear_prefix_cache()

    def other_conversation() -> None:  # untimed set-up of switch-warm
        forget_prefix()
        hubs["switch"].chat(OTHER, max_new_tokens=1, expert="switch-lora", **GREEDY)

    runs = {"generate": plain, **{f"routed-{n}": routed(n) for n in counts}}
    setups = {}
    if args.switch:
        runs["switch-cold"] = runs["switch-warm"] = switching
        setups = {"switch-cold": forget_prefix, "switch-warm": other_conversation}
    texts = {}
    for name, fn in runs.items():  # warm-up, and the outputs must agree
        setups.get(name, lambda: None)()
        texts[name] = fn()
    differ = [name for name, t in texts.items() if not name.startswith("switch") and t != texts["generate"]]
    console.print(
        "identical greedy output across the routed and generate runs: "
        f"{'NO: ' + ', '.join(differ) if differ else 'yes'}"
    )
    if args.switch:
        console.print(
            f"identical expert output cold and warm: {'yes' if texts['switch-cold'] == texts['switch-warm'] else 'NO'}"
        )
        backend = hubs["switch"].pool.get("switch-lora")
        first_layer, backend.first_layer = backend.first_layer, None  # once, untimed: the whole prompt recomputed
        forget_prefix()
        recomputed = switching()
        backend.first_layer = first_layer
        console.print(
            f"expert continues the meta cache from layer {first_layer}; "
            f"same output as recomputing the whole prompt: {'yes' if recomputed == texts['switch-cold'] else 'NO'}"
        )

    def timed(names: list[str], reps: int, label: str) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """Wall and CPU time (this process's: robust to other load on a shared machine) per run,
        in rotating order so that no run always goes first."""
        wall: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        with Progress(console=console) as bar:
            task = bar.add_task(label, total=reps * len(names))
            for rep in range(reps):
                for name in names[rep % len(names) :] + names[: rep % len(names)]:
                    setups.get(name, lambda: None)()
                    t0, c0 = time.perf_counter(), time.process_time()
                    runs[name]()
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
                    bar.advance(task)
        for name in names:
            med = statistics.median(wall[name])
            print(
                f"{name:>12}: median {med:.3f} s ({args.new_tokens / med:.1f} tok/s), min {min(wall[name]):.3f} s, "
                f"CPU time median {statistics.median(cpu[name]):.3f} s"
            )
        return wall, cpu

    def paired(a: list[float], b: list[float]) -> float:
        return statistics.median([x / y for x, y in zip(a, b)])

    lines = []
    if args.speed:
        speed_names = ["generate", *(f"routed-{n}" for n in counts)]
        wall, cpu = timed(speed_names, args.reps, "timing decoding speed")
        if differ:
            print("warning: outputs differed, the comparison is not like for like", file=sys.stderr)
        for n in counts:
            target = 0.95 if n <= 6 else 0.9
            ratio = paired(wall["generate"], wall[f"routed-{n}"])
            lines.append(
                f"speed ratio routed ({n} experts) / generate: {ratio:.3f} wall, "
                f"{paired(cpu['generate'], cpu[f'routed-{n}']):.3f} CPU time "
                f"(medians of {args.reps} paired runs; target ≥ {target}) {'PASS' if ratio >= target else 'FAIL'}"
            )
    if args.switch:
        base = f"routed-{counts[0]}"
        reps = args.switch_reps or args.reps
        wall, cpu = timed([base, "switch-cold", "switch-warm"], reps, "timing the switch")
        for name, what in (("switch-cold", "meta cache continued"), ("switch-warm", "system prompt cached")):
            cost, cost_cpu = paired(wall[name], wall[base]) - 1, paired(cpu[name], cpu[base]) - 1
            lines.append(
                f"switch cost, {name} ({what}; LoRA expert from the first token vs {base}, no switch): "
                f"{cost:+.1%} wall, {cost_cpu:+.1%} CPU time "
                f"(medians of {reps} paired runs; target ≤ +1.7%) {'PASS' if cost <= 0.017 else 'FAIL'}"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Fine-tune one LoRA expert over the embedded meta model (there is no etr-hub command for this).

    python recipes/mmlu_experts/train_lora.py --data train.jsonl --out adapters/astronomy [--r 8] [--epochs 2]

Loss on the response tokens only, with the project's own chat encoding (etr_hub.models.chat), so
the expert learns exactly the format the eval scores. The adapter is saved in float16 (peft
upcasts it on load) with `base_model_name_or_path` naming the public base model, not a local
folder: etr-hub then reads it as an adapter ON the meta model and shares the meta's weights.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="JSONL with query/response")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=int, default=16)
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument(
        "--top-layers", type=int, default=8, help="LoRA only in the last N decoder layers: backward stops there"
    )
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda, cuda:1, mps)")
    ap.add_argument(
        "--save-every", type=int, default=0, help="save the adapter every N steps (resumable with --resume)"
    )
    ap.add_argument(
        "--stop-after", type=int, default=0, help="stop after N steps of the schedule (which still spans --epochs)"
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT's adapter and train_state.json (same data and settings)",
    )
    ap.add_argument(
        "--init-adapter",
        type=Path,
        help="start from this finished adapter's weights (a further phase with its own schedule)",
    )
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    from etr_hub.models.chat import prompt_and_response_ids
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.models.refs import ModelRef

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    meta = load_causal_lm(ModelRef.parse("embedded:smollm2-135m-instruct"), role="meta")
    tok = meta.tokenizer
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    encoded = []
    for r in rows:
        p, resp = prompt_and_response_ids(tok, r["query"], r["response"])
        encoded.append((p[-(args.max_tokens - len(resp)) :], resp))

    n_layers = meta.model.config.num_hidden_layers
    layers = list(range(max(0, n_layers - args.top_layers), n_layers))
    model = get_peft_model(
        meta.model,
        LoraConfig(
            r=args.r,
            lora_alpha=args.alpha,
            lora_dropout=0.0,
            layers_to_transform=layers,
            target_modules=args.targets.split(","),
            task_type="CAUSAL_LM",
        ),
    )
    start = 0
    state_file = args.out / "train_state.json"
    resuming = args.resume and state_file.exists()  # weights from the last save; the data order is replayed below
    init = args.out if resuming else args.init_adapter
    if init is not None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(
            model, {k: v.float() for k, v in load_file(init / "adapter_model.safetensors").items()}
        )
    if resuming:
        start = json.loads(state_file.read_text())["step"]
    model.to(args.device)
    decoder, head = model.get_base_model().get_decoder(), model.get_base_model().get_output_embeddings()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(True)
    model.train()
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    steps = max(1, math.ceil(len(encoded) * args.epochs / args.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    last = min(steps, args.stop_after) if args.stop_after > 0 else steps
    rng = random.Random(args.seed)
    order: list[int] = []
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t0, seen, running = time.perf_counter(), 0, None
    for step in range(last):
        if len(order) < args.batch_size:
            more = list(range(len(encoded)))
            rng.shuffle(more)
            order += more
        batch, order = order[: args.batch_size], order[args.batch_size :]
        if step < start:  # resuming: replay the schedule and the data order, train nothing
            sched.step()
            continue
        seqs = [encoded[i][0] + encoded[i][1] for i in batch]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T)
        mask = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T)
        rows, cols, targets = [], [], []
        for b, i in enumerate(batch):
            p, r = encoded[i]
            ids[b, : len(p) + len(r)] = torch.tensor(p + r)
            mask[b, : len(p) + len(r)] = 1
            rows += [b] * len(r)
            cols += range(len(p) - 1, len(p) + len(r) - 1)  # positions that predict the response
            targets += r
        ids, mask = ids.to(args.device), mask.to(args.device)
        h = decoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
        logits = head(h[rows, cols])  # (M, V): the LM head only where there is a loss
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(targets, device=args.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        seen += len(batch)
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if step % 10 == 0 or step == last - 1:
            print(f"step {step + 1}/{steps} loss {running:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < last:
            save_adapter(model, args.out)
            state_file.write_text(json.dumps({"step": step + 1, "loss": running}) + "\n")

    save_adapter(model, args.out)
    state_file.unlink(missing_ok=True)
    print(
        json.dumps(
            {
                "examples": len(encoded),
                "steps": last,
                "schedule_steps": steps,
                "final_loss": running,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


def save_adapter(model, out: Path) -> None:
    """The adapter in float16 (peft upcasts it on load), its config naming the public base model."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    weights = out / "adapter_model.safetensors"
    save_file({k: v.to(torch.float16).contiguous() for k, v in load_file(weights).items()}, str(weights))
    cfg_file = out / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = BASE_NAME  # not a local path: the adapter sits on the meta model
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "README.md").unlink(missing_ok=True)  # peft's template card; the bundle has its own


if __name__ == "__main__":
    main()

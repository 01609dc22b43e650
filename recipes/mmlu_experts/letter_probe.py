"""Why the shipped adapters do not beat the meta model on MMLU: what a 135M model knows, and
whether a small adapter can add to it.

    python recipes/mmlu_experts/letter_probe.py [--objective letters|options] [--n 600] [--epochs 3]

On the recipe's development-evaluation questions, with the embedded meta model:
 1. letter scoring (what `etr-hub eval mmlu` does): accuracy and which letters it picks;
 2. option-text likelihood (cloze: each option's mean token log-probability after the bare stem,
    the formulation small models are usually measured with): how much of the knowledge it has;
 3. a LoRA shaped like the shipped experts (r=8 on q/v of the last 8 layers) trained on `--n`
    MMLU questions of OTHER subjects, evaluated after each epoch, with `--objective`:
    `letters` — 4-way cross-entropy on the letter after "Answer:" (scored as in 1.);
    `options` — 4-way cross-entropy over the options' cloze scores (scored as in 2.).
The residual stream entering the first adapted layer is computed once per sequence (the lower
layers are frozen), so each epoch runs 8 of the 30 layers; 1. and 2. are the same code with the
adapter still a no-op (LoRA's B starts at zero).
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
ADAPTED_LAYERS = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-dir", type=Path, default=ROOT / ".work" / "mmlu" / "dev_eval")
    ap.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data" / "mmlu", help="dev/ val/ test/ MMLU CSVs"
    )
    ap.add_argument("--objective", choices=("letters", "options"), default="letters")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from etr_hub.eval.mmlu import (
        MMLU_EXPERT_SUBJECTS,
        pick_distractors,
        read_mmlu_dir,
        render_query,
    )
    from etr_hub.eval.scoring import letter_ids, scoring_prompt_ids
    from etr_hub.generation.shared_prefix import only_layers_from
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.models.refs import ModelRef
    from etr_hub.models.scoring import right_pad

    torch.manual_seed(0)
    meta = load_causal_lm(ModelRef.parse("embedded:smollm2-135m-instruct"), role="meta")
    tok, model = meta.tokenizer, meta.model
    dec, head = model.get_decoder(), model.get_output_embeddings()
    _, letters = letter_ids(tok)
    n_layers = model.config.num_hidden_layers
    first = n_layers - ADAPTED_LAYERS

    def sequences(q, objective: str) -> tuple[list[list[int]], list[int]]:
        """(token ids of each sequence to run, where the scored part starts in each)."""
        if objective == "letters":  # one sequence; the letter is the next token after its end
            ids = scoring_prompt_ids(tok, render_query(q))
            return [ids], [len(ids)]
        prompt, _ = routing_prompt_ids(tok, q.question.strip())
        options = [
            list(tok(" " + c.strip(), add_special_tokens=False)["input_ids"]) or [tok.eos_token_id] for c in q.choices
        ]
        return [prompt + o for o in options], [len(prompt)] * len(options)

    @torch.no_grad()
    def residuals(qs, objective: str) -> list[tuple[list[torch.Tensor], list[list[int]], list[int]]]:
        """Per question: the residual entering layer `first` of each of its sequences ((T_s, C) each)."""
        out = []
        for q in qs:
            seqs, starts = sequences(q, objective)
            ids, mask = right_pad(seqs, 0)  # (S, T)
            kept = []
            hook = dec.layers[first].register_forward_pre_hook(
                lambda m, a, kw, kept=kept: kept.append((a[0] if a else kw["hidden_states"]).detach()), with_kwargs=True
            )
            try:
                dec(input_ids=ids, attention_mask=mask)
            finally:
                hook.remove()
            out.append(([kept[0][s, : len(seq)].clone() for s, seq in enumerate(seqs)], seqs, starts))
        return out

    def option_scores(upper, items, objective: str, grad: bool) -> torch.Tensor:
        """(B, 4) scores of a batch of questions: letter log-probabilities, or options' mean token log-probabilities."""
        flat = [(r, seq, start) for res, seqs, starts in items for r, seq, start in zip(res, seqs, starts)]
        lens = [r.shape[0] for r, _, _ in flat]
        x = torch.zeros(len(flat), max(lens), flat[0][0].shape[1])  # (S, T, C)
        mask = torch.zeros(len(flat), max(lens), dtype=torch.long)  # (S, T)
        for i, (r, _, _) in enumerate(flat):
            x[i, : len(r)], mask[i, : len(r)] = r, 1
        with torch.set_grad_enabled(grad), only_layers_from(upper, first):
            h = upper(inputs_embeds=x, attention_mask=mask).last_hidden_state  # (S, T, C)
        if objective == "letters":  # one sequence per question
            last = h[torch.arange(len(flat)), torch.tensor(lens) - 1]  # (B, C)
            return torch.log_softmax(head(last).float(), -1)[:, letters]  # (B, 4)
        scores = []
        for i, (_, seq, start) in enumerate(flat):
            logp = torch.log_softmax(head(h[i, start - 1 : len(seq) - 1]).float(), -1)  # (t, V)
            scores.append(logp.gather(1, torch.tensor(seq[start:])[:, None]).mean())
        return torch.stack(scores).view(len(items), -1)  # (B, 4)

    def accuracy(upper, items, objective: str, gold: torch.Tensor) -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            pred = torch.cat(
                [option_scores(upper, items[i : i + 32], objective, False).argmax(1) for i in range(0, len(items), 32)]
            )
        return (pred == gold).float().mean().item(), pred

    def picks(pred: torch.Tensor) -> dict:
        return dict(sorted(collections.Counter("ABCD"[i] for i in pred.tolist()).items()))

    evalq = [q for qs in read_mmlu_dir(args.eval_dir).questions.values() for q in qs]
    gold = torch.tensor([q.answer_index for q in evalq])
    print(
        f"{len(evalq)} evaluation questions; gold letters "
        f"{dict(sorted(collections.Counter(q.answer for q in evalq).items()))}"
    )
    pool: dict[str, list] = {}
    eval_keys = {q.key for q in evalq}
    for split in ("dev", "val", "test"):
        for subject, qs in read_mmlu_dir(args.data / split).questions.items():
            if subject not in MMLU_EXPERT_SUBJECTS:
                pool.setdefault(subject, []).extend(
                    q for q in qs if len(render_query(q)) <= 500 and q.key not in eval_keys
                )
    train = pick_distractors(pool, args.n, seed=0)

    t0 = time.perf_counter()
    eval_items = {objective: residuals(evalq, objective) for objective in ("letters", "options")}
    train_items = residuals(train, args.objective)
    print(f"residuals of {len(train)} + {len(evalq)} questions: {time.perf_counter() - t0:.0f} s", flush=True)
    peft = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
            layers_to_transform=list(range(first, n_layers)),
            task_type="CAUSAL_LM",
        ),
    )
    upper = peft.get_base_model().get_decoder()
    peft.eval()
    letter_acc, pred = accuracy(upper, eval_items["letters"], "letters", gold)
    print(f"meta model, letter scoring: {letter_acc:.1%} (picks {picks(pred)})")
    cloze_acc, _ = accuracy(upper, eval_items["options"], "options", gold)
    print(f"meta model, option-text likelihood (cloze): {cloze_acc:.1%}", flush=True)

    params = [p for p in peft.parameters() if p.requires_grad]
    y_train = torch.tensor([q.answer_index for q in train])
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    steps = args.epochs * -(-len(train_items) // args.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / steps))
    rng = random.Random(0)
    for epoch in range(args.epochs):
        peft.train()
        order = list(range(len(train_items)))
        rng.shuffle(order)
        total, t0 = 0.0, time.perf_counter()
        for i in range(0, len(order), args.batch_size):
            batch = order[i : i + args.batch_size]
            loss = torch.nn.functional.cross_entropy(
                option_scores(upper, [train_items[j] for j in batch], args.objective, True), y_train[batch]
            )
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
        peft.eval()
        acc, pred = accuracy(upper, eval_items[args.objective], args.objective, gold)
        scored, chance = ("letter", " (chance: ln 4 = 1.386)") if args.objective == "letters" else ("cloze", "")
        print(
            f"LoRA trained on {args.objective}, epoch {epoch + 1}: train loss {total / len(order):.3f}{chance}, "
            f"eval {scored} accuracy {acc:.1%} (picks {picks(pred)}); {time.perf_counter() - t0:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Why the shipped adapters do not beat the meta model on MMLU letters: three measurements.

    python recipes/mmlu_experts/letter_probe.py [--eval-dir .work/mmlu/dev_eval] [--n 600] [--epochs 3]

On the recipe's development-evaluation questions, with the embedded meta model:
 1. letter scoring (what `etr-hub eval mmlu` does): accuracy and which letters it picks;
 2. option-text likelihood (cloze: the option's mean token log-probability after the bare
    stem): how much of the knowledge the model has at all;
 3. a LoRA (r=8 on q/v of the last 8 layers, as the shipped experts) trained directly on the
    letter choice of `--n` MMLU questions of OTHER subjects (4-way cross-entropy on the letter
    only), evaluated after each epoch. The residual stream entering the first adapted layer is
    computed once per question (the lower layers are frozen), so each epoch runs 8 of 30 layers.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-dir", type=Path, default=ROOT / ".work" / "mmlu" / "dev_eval")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mmlu", help="dev/ val/ test/ MMLU CSVs")
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
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.models.refs import ModelRef
    from etr_hub.queryset.scoring import right_pad
    from etr_hub.runtime.shared_prefix import only_layers_from

    torch.manual_seed(0)
    meta = load_causal_lm(ModelRef.parse("embedded:smollm2-135m-instruct"), role="meta")
    tok, model = meta.tokenizer, meta.model
    dec, head = model.get_decoder(), model.get_output_embeddings()
    _, letters = letter_ids(tok)
    evalq = [q for qs in read_mmlu_dir(args.eval_dir).questions.values() for q in qs]
    gold = torch.tensor([q.answer_index for q in evalq])
    print(f"{len(evalq)} evaluation questions; gold letters {dict(sorted(collections.Counter(q.answer for q in evalq).items()))}")

    # 2. cloze: mean log-probability of each option's text after the stem
    right = 0
    with torch.no_grad():
        for q in evalq:
            prompt, _ = routing_prompt_ids(tok, q.question.strip())
            seqs = [prompt + list(tok(" " + c.strip(), add_special_tokens=False)["input_ids"]) for c in q.choices]
            ids, mask = right_pad(seqs, 0)  # (4, T)
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)  # (4, T, V)
            means = []
            for i, s in enumerate(seqs):
                target = torch.tensor(s[len(prompt):])  # (t,)
                means.append(float(logp[i, len(prompt) - 1 : len(s) - 1].gather(1, target[:, None]).mean()))
            right += int(max(range(4), key=means.__getitem__) == q.answer_index)
    cloze = right / len(evalq)

    # 3. residuals entering the first adapted layer, once
    n_layers = model.config.num_hidden_layers
    first = n_layers - 8
    pool: dict[str, list] = {}
    eval_keys = {q.key for q in evalq}
    for split in ("dev", "val", "test"):
        for subject, qs in read_mmlu_dir(args.data / split).questions.items():
            if subject not in MMLU_EXPERT_SUBJECTS:
                pool.setdefault(subject, []).extend(q for q in qs if len(render_query(q)) <= 500 and q.key not in eval_keys)
    train = pick_distractors(pool, args.n, seed=0)

    @torch.no_grad()
    def residuals(qs):
        out = []
        for i in range(0, len(qs), 16):
            prompts = [scoring_prompt_ids(tok, render_query(q)) for q in qs[i : i + 16]]
            ids, mask = right_pad(prompts, 0)  # (B, T)
            kept = []
            hook = dec.layers[first].register_forward_pre_hook(
                lambda m, a, kw, kept=kept: kept.append((a[0] if a else kw["hidden_states"]).detach()), with_kwargs=True)
            try:
                dec(input_ids=ids, attention_mask=mask)
            finally:
                hook.remove()
            out += [kept[0][b, : len(p)].clone() for b, p in enumerate(prompts)]  # (T_b, C) each
        return out

    t0 = time.perf_counter()
    train_res, eval_res = residuals(train), residuals(evalq)
    print(f"residuals of {len(train) + len(evalq)} questions: {time.perf_counter() - t0:.0f} s")
    y_train = torch.tensor([q.answer_index for q in train])
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                            layers_to_transform=list(range(first, n_layers)), task_type="CAUSAL_LM"))
    upper = peft.get_base_model().get_decoder()
    params = [p for p in peft.parameters() if p.requires_grad]

    def letter_logp(batch, grad: bool):
        lens = [r.shape[0] for r in batch]
        x = torch.zeros(len(batch), max(lens), batch[0].shape[1])  # (B, T, C)
        mask = torch.zeros(len(batch), max(lens), dtype=torch.long)  # (B, T)
        for b, r in enumerate(batch):
            x[b, : len(r)], mask[b, : len(r)] = r, 1
        with torch.set_grad_enabled(grad), only_layers_from(upper, first):
            h = upper(inputs_embeds=x, attention_mask=mask).last_hidden_state  # (B, T, C)
        last = h[torch.arange(len(batch)), torch.tensor(lens) - 1]  # (B, C)
        return torch.log_softmax(head(last).float(), -1)[:, letters]  # (B, 4)

    def evaluate():
        peft.eval()
        with torch.no_grad():
            pred = torch.cat([letter_logp(eval_res[i : i + 32], False).argmax(1) for i in range(0, len(eval_res), 32)])
        return (pred == gold).float().mean().item(), pred

    letter_acc, pred = evaluate()  # the adapter starts as a no-op (B = 0): this is the meta model
    picks = dict(sorted(collections.Counter("ABCD"[i] for i in pred.tolist()).items()))
    print(f"meta model, letter scoring: {letter_acc:.1%} (picks {picks})")
    print(f"meta model, option-text likelihood (cloze): {cloze:.1%}")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    steps = args.epochs * -(-len(train_res) // args.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / steps))
    rng = random.Random(0)
    for epoch in range(args.epochs):
        peft.train()
        order = list(range(len(train_res)))
        rng.shuffle(order)
        total, t0 = 0.0, time.perf_counter()
        for i in range(0, len(order), args.batch_size):
            batch = order[i : i + args.batch_size]
            loss = torch.nn.functional.cross_entropy(letter_logp([train_res[j] for j in batch], True), y_train[batch])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
        acc, pred = evaluate()
        picks = dict(sorted(collections.Counter("ABCD"[i] for i in pred.tolist()).items()))
        print(f"LoRA trained on letters, epoch {epoch + 1}: train loss {total / len(order):.3f} (chance 1.386), "
              f"eval letter accuracy {acc:.1%} (picks {picks}); {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

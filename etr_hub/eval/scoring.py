"""Letter scoring (which of A–D a model prefers) and a cache of per-(question, model) vectors.

A model answers an MMLU question with the option letter it gives the highest log-probability
right after `Answer:` in its own chat template (the query is the user turn). Only the last
position's logits are needed, so one no-grad forward pass per question and model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from etr_hub.cache import save_atomic
from etr_hub.eval.mmlu import ANSWER_PREFIX, LETTERS
from etr_hub.models.chat import routing_prompt_ids
from etr_hub.models.scoring import model_device, right_pad

Advance = Callable[[int], None] | None
SCORE_FORMAT = "letters-v1"  # part of every cache key: change it when the prompt format changes
MAX_PROMPT = 1024


def letter_ids(tokenizer, letters: Sequence[str] = LETTERS) -> tuple[list[int], list[int]]:
    """(shared prefix ids, one distinguishing id per letter) for " A", " B", …

    Byte-level tokenizers may split " A" into "Ġ" + "A": the shared part is appended to the
    prompt and the letters are told apart by their first differing token.
    """
    encoded = [list(tokenizer(" " + letter, add_special_tokens=False)["input_ids"]) for letter in letters]
    common = 0
    while all(len(e) > common + 1 for e in encoded) and len({e[common] for e in encoded}) == 1:
        common += 1
    firsts = [e[common] for e in encoded]
    if len(set(firsts)) != len(firsts):
        raise ValueError(f"the tokenizer does not tell the letters {', '.join(letters)} apart")
    return encoded[0][:common], firsts


def scoring_prompt_ids(
    tokenizer, query: str, prefix: str = ANSWER_PREFIX, letters: Sequence[str] = LETTERS
) -> list[int]:
    """Chat-templated query, then the start of the reply up to where the letter goes."""
    prompt, _ = routing_prompt_ids(tokenizer, query)
    shared, _ = letter_ids(tokenizer, letters)
    reply = list(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix else []
    return (prompt + reply + shared)[-MAX_PROMPT:]


@torch.no_grad()
def last_position_logits(
    model,
    prompts: list[list[int]],
    pad_id: int,
    *,
    batch_size: int = 8,
    advance: Advance = None,
    on_batch: Callable[[list[int], torch.Tensor], None] | None = None,
) -> None:
    """Run right-padded batches on the model's device and hand each batch's last-position hidden
    state (B, C) to `on_batch`."""
    decoder, device = model.get_decoder(), model_device(model)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask = right_pad([prompts[i] for i in batch], pad_id, device)  # (B, T), (B, T)
        h = decoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
        last = torch.tensor([len(prompts[i]) - 1 for i in batch], device=device)
        if on_batch is not None:
            on_batch(batch, h[torch.arange(len(batch), device=device), last])  # (B, C)
        if advance:
            advance(len(batch))


def score_letters(
    model,
    tokenizer,
    queries: Sequence[str],
    *,
    prefix: str = ANSWER_PREFIX,
    letters: Sequence[str] = LETTERS,
    batch_size: int = 8,
    advance: Advance = None,
) -> torch.Tensor:
    """(N, L) log-probabilities of each letter as the next token after `prefix`."""
    _, ids = letter_ids(tokenizer, letters)
    head = model.get_output_embeddings()
    prompts = [scoring_prompt_ids(tokenizer, q, prefix, letters) for q in queries]
    out = torch.zeros(len(prompts), len(letters))

    def keep(batch: list[int], h_last: torch.Tensor) -> None:
        logp = torch.log_softmax(head(h_last).float(), dim=-1)  # (B, V)
        out[batch] = logp[:, ids].cpu()  # (B, L)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    last_position_logits(model, prompts, pad, batch_size=batch_size, advance=advance, on_batch=keep)
    return out


class VectorCache:
    """Per-(item key, model key) vectors under `$ETR_HUB_HOME/cache/eval/`: letter scores,
    routing extras, embeddings. One safetensors file per model key, rewritten atomically."""

    def __init__(self, root: Path):
        self.dir = root / "eval"

    def _path(self, model_key: str) -> Path:
        return self.dir / f"{model_key[:40]}.safetensors"

    def get(self, model_key: str, keys: list[str]) -> tuple[torch.Tensor | None, list[int]]:
        """(rows (N, D) with zeros where missing, indices of missing keys)."""
        path = self._path(model_key)
        if not path.is_file():
            return None, list(range(len(keys)))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            stored = json.loads(f.metadata()["keys"])
            values = f.get_tensor("values")
        index = {k: i for i, k in enumerate(stored)}
        rows = torch.zeros(len(keys), values.shape[1])
        missing = []
        for i, k in enumerate(keys):
            if k in index:
                rows[i] = values[index[k]]
            else:
                missing.append(i)
        return rows, missing

    def put(self, model_key: str, keys: list[str], values: torch.Tensor) -> None:
        if not keys:
            return
        path = self._path(model_key)
        old_keys, old = [], None
        if path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                old_keys, old = json.loads(f.metadata()["keys"]), f.get_tensor("values")
        merged = dict(zip(old_keys, old)) if old is not None and old.shape[1] == values.shape[1] else {}
        merged.update(zip(keys, values.float()))
        save_atomic({"values": torch.stack(list(merged.values()))}, path, {"keys": json.dumps(list(merged))})

    def fetch(self, model_key: str, keys: list[str], compute: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """Cached rows for `keys`; `compute(missing indices)` fills and stores the rest."""
        rows, missing = self.get(model_key, keys)
        if missing:
            new = compute(missing).float()  # (M, D)
            self.put(model_key, [keys[i] for i in missing], new)
            if rows is None:
                rows = torch.zeros(len(keys), new.shape[1])  # (N, D)
            rows[missing] = new
        return rows if rows is not None else torch.zeros(0, 0)  # no keys asked for

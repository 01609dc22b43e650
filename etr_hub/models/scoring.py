"""Batched, padded, no-grad passes of a frozen model over (query, response) pairs.

One pass yields both what query-set selection needs (summed response NLL, eq. 3) and what
token training needs (the final hidden state h at the routing position, i.e. the last prompt
token, and logsumexp(W_V h)). Logits are computed only at response positions: the LM head
over the whole vocabulary is the costly part of a small model's forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from etr_hub.cache import RoutingStates
from etr_hub.models.chat import prompt_and_response_ids, routing_prompt_ids

Advance = Callable[[int], None] | None
MAX_TOKENS = 1024  # per example (query-set build --max-tokens); longer responses are cut (their NLL is
# summed over what fits), a row whose prompt alone leaves no room is skipped (scored NaN)


@dataclass
class PassResult:
    loss: torch.Tensor  # (N,) summed NLL of the response tokens
    states: RoutingStates | None  # at the routing position (the first response token's input)


Pair = tuple[list[int], list[int]]


def encode_pairs(
    tokenizer, queries: Sequence[str], responses: Sequence[str], max_tokens: int = MAX_TOKENS
) -> list[Pair | None]:
    """(prompt ids, response ids) cut to `max_tokens` in all; None where the prompt leaves no
    room for one response token (attention over a huge row would need memory quadratic in it)."""
    pairs: list[Pair | None] = []
    for q, r in zip(queries, responses):
        prompt, response = prompt_and_response_ids(tokenizer, q, r)
        pairs.append((prompt, response[: max_tokens - len(prompt)]) if len(prompt) < max_tokens else None)
    return pairs


def right_pad(
    seqs: Sequence[Sequence[int]], pad: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> right-padded ids (B, T) and attention mask (B, T), on `device`."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)  # (B, T)
    for b, x in enumerate(seqs):
        ids[b, : len(x)], mask[b, : len(x)] = torch.tensor(list(x)), 1
    return ids.to(device), mask.to(device)


def model_device(model) -> torch.device:
    """Where `model` computes (its input embedding's device): batches go there."""
    return model.get_input_embeddings().weight.device


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # similar lengths pad little
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def score_pairs(
    model,
    tokenizer,
    pairs: list[Pair | None],
    *,
    batch_size: int = 8,
    want_states: bool = False,
    advance: Advance = None,
) -> PassResult:
    """Summed response NLL per pair (+ routing-position states), right-padded batches on the
    model's device; NaN (and zero states) for a skipped (None) pair. Results are float32 on the CPU."""
    decoder, head, device = model.get_decoder(), model.get_output_embeddings(), model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n = len(pairs)
    loss = torch.full((n,), float("nan"))
    states = (
        RoutingStates(torch.zeros(n, model.config.hidden_size), torch.zeros(n), torch.zeros(n)) if want_states else None
    )
    scored = {i: pair for i, pair in enumerate(pairs) if pair is not None}
    if advance and len(scored) < n:
        advance(n - len(scored))
    order = list(scored)
    for part in _batches([len(p) + len(r) for p, r in scored.values()], batch_size):
        batch = [order[j] for j in part]
        ids, mask = right_pad([scored[i][0] + scored[i][1] for i in batch], pad, device)  # (B, T), (B, T)
        h = decoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)

        # positions P-1 .. P+R-2 predict the response tokens P .. P+R-1
        rows: list[int] = []
        cols: list[int] = []
        targets: list[int] = []
        for b, i in enumerate(batch):
            p, r = len(scored[i][0]), len(scored[i][1])
            rows += [b] * r
            cols += range(p - 1, p + r - 1)
            targets += scored[i][1]
        h_resp = h[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]  # (M, C)
        logits = head(h_resp).float()  # (M, V)
        nll = F.cross_entropy(logits, torch.tensor(targets, device=device), reduction="none")  # (M,)
        per_example = torch.zeros(len(batch), device=device).index_add_(0, torch.tensor(rows, device=device), nll)
        loss[batch] = per_example.cpu()  # (B,)

        if states is not None:
            first = torch.tensor([rows.index(b) for b in range(len(batch))], device=device)  # routing position row
            states.hidden[batch] = h_resp[first].float().cpu()  # (B, C)
            states.lse[batch] = torch.logsumexp(logits[first], dim=-1).cpu()  # (B,)
            states.top[batch] = logits[first].max(dim=-1).values.cpu()  # (B,)
        if advance:
            advance(len(batch))
    return PassResult(loss=loss, states=states)


@torch.no_grad()
def routing_states(
    model, tokenizer, queries: Sequence[str], *, batch_size: int = 16, advance: Advance = None
) -> RoutingStates:
    """The routing states of each query, without responses: batches on the model's device, results
    float32 on the CPU."""
    decoder, head, device = model.get_decoder(), model.get_output_embeddings(), model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts = [routing_prompt_ids(tokenizer, q)[0][-MAX_TOKENS:] for q in queries]
    n, c = len(prompts), model.config.hidden_size
    hidden, lse, top = torch.zeros(n, c), torch.zeros(n), torch.zeros(n)
    for batch in _batches([len(p) for p in prompts], batch_size):
        ids, mask = right_pad([prompts[i] for i in batch], pad, device)  # (B, T), (B, T)
        h = decoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
        last = torch.tensor([len(prompts[i]) - 1 for i in batch], device=device)
        h_route = h[torch.arange(len(batch), device=device), last]  # (B, C) in the model's dtype
        word = head(h_route).float()  # (B, V)
        hidden[batch] = h_route.float().cpu()
        lse[batch], top[batch] = torch.logsumexp(word, dim=-1).cpu(), word.max(dim=-1).values.cpu()  # (B,), (B,)
        if advance:
            advance(len(batch))
    return RoutingStates(hidden, lse, top)

"""Facts about a loaded model the decoder needs: end-of-turn ids, context length, memory."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from etr_hub.models.default_meta import recommended_sampling

FALLBACK_CONTEXT = 2048  # for configs that state no context length


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a turn: the generation config's eos id(s) and the tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def context_limit(model: Any, tokenizer: Any = None) -> int:
    """Positions the model can attend over (the smaller of config and tokenizer, when both say)."""
    config = getattr(model, "config", None)
    stated = [getattr(config, key, None) for key in ("max_position_embeddings", "n_positions", "max_sequence_length")]
    limits = [int(v) for v in stated if isinstance(v, int) and v > 0]
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 10**7:  # transformers uses ~1e30 for "unknown"
        limits.append(tok_limit)
    return min(limits) if limits else FALLBACK_CONTEXT


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when token ids mean the same to both (so ids can be handed over without re-tokenizing)."""
    if a is b:
        return True
    try:
        return (
            type(a) is type(b)
            and a.get_vocab() == b.get_vocab()
            and getattr(a, "chat_template", None) == getattr(b, "chat_template", None)
            and a.all_special_ids == b.all_special_ids
        )
    except Exception:
        return False


def unshared_bytes(model: Any, shared_with: Any | None = None) -> int:
    """Bytes of `model`'s parameters and buffers that are not `shared_with`'s tensors."""
    shared = set()
    if shared_with is not None:
        shared = {t.data_ptr() for t in (*shared_with.parameters(), *shared_with.buffers())}
    seen: set[int] = set()
    total = 0
    for t in (*model.parameters(), *model.buffers()):
        ptr = t.data_ptr()
        if ptr in shared or ptr in seen:
            continue
        seen.add(ptr)
        total += t.numel() * t.element_size()
    return total


@dataclass(frozen=True)
class SamplingDefaults:
    """How a model is meant to be sampled, where it says so (else greedy, no penalty)."""

    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    source: str = "greedy: the model recommends no sampling settings"


def sampling_defaults(model: Any) -> SamplingDefaults:
    """The model's own generation_config.json when it sets sampling or a repetition penalty (as
    transformers reads it: greedy unless do_sample), else the embedded default's model card."""
    config = getattr(model, "generation_config", None)
    sample = getattr(config, "do_sample", None) is True
    penalty = _number(getattr(config, "repetition_penalty", None), 1.0, lambda v: v > 0)
    if sample or penalty != 1.0:
        return SamplingDefaults(
            temperature=_number(getattr(config, "temperature", None), 1.0, lambda v: v >= 0) if sample else 0.0,
            top_p=_number(getattr(config, "top_p", None), 1.0, lambda v: 0 < v <= 1) if sample else 1.0,
            repetition_penalty=penalty,
            source="the model's generation_config.json",
        )
    card = recommended_sampling(getattr(model, "name_or_path", None) or "")
    if card is not None:
        return SamplingDefaults(
            **card, source="the embedded SmolLM2-135M-Instruct's model card, plus a repetition penalty"
        )
    return SamplingDefaults()


def _number(value: Any, default: float, ok: Any) -> float:
    """A config value if it is a finite number `ok` accepts, else the default."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and ok(value):
        return float(value)
    return default

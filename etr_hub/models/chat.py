"""Token ids for chat prompts and responses, as a model sees them.

The routing position is the last prompt token (after the generation prompt, e.g.
`<|im_start|>assistant\\n`): that is where the meta model decides between its vocabulary and the
expert tokens. Tokenizers without a chat template fall back to a plain-text format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Messages = Sequence[Mapping[str, str]] | str


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def routing_prompt_ids(tokenizer: Any, messages: Messages) -> tuple[list[int], bool]:
    """(prompt ids ending at the routing position, whether the chat template was used)."""
    messages = _as_messages(messages)
    if has_chat_template(tokenizer):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return to_ids(ids), True
    return to_ids(tokenizer(plain_prompt(messages), add_special_tokens=True)), False


def prompt_and_response_ids(tokenizer: Any, messages: Messages, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids); the response ends with the end-of-turn (eos) token."""
    messages = _as_messages(messages)
    prompt, used_template = routing_prompt_ids(tokenizer, messages)
    if used_template:
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": response}], add_generation_prompt=False, tokenize=True
        )
        full = to_ids(full)
        # Templates may tokenize differently across the boundary; only trust an exact prefix.
        if full[: len(prompt)] == prompt and len(full) > len(prompt):
            return prompt, _end_at_eos(full[len(prompt) :], tokenizer.eos_token_id)
        text = response
    else:
        text = " " + response  # "Assistant:" is followed by a space in the plain format
    body = to_ids(tokenizer(text, add_special_tokens=False))
    return prompt, _end_at_eos(body, tokenizer.eos_token_id)


def plain_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """The fallback format: "User: ...\\nAssistant:" (roles capitalised, one turn per line)."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def _end_at_eos(ids: list[int], eos_id: int | None) -> list[int]:
    """Cut after the last eos (drops e.g. the newline ChatML puts after <|im_end|>); add one if absent.

    The model stops generating at eos, so what follows it is never produced.
    """
    if eos_id is None:
        return ids
    if eos_id in ids:
        return ids[: len(ids) - ids[::-1].index(eos_id)]
    return [*ids, eos_id]


def _as_messages(messages: Messages) -> list[dict[str, str]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [dict(m) for m in messages]


def to_ids(encoded: Any) -> list[int]:
    """Normalise what tokenizers return (list, BatchEncoding/dict, tensor, batch of one) to list[int]."""
    if isinstance(encoded, Mapping) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):
        if len(encoded) != 1:
            raise ValueError(f"expected one sequence, got a batch of {len(encoded)}")
        encoded = encoded[0]
    return [int(i) for i in encoded]

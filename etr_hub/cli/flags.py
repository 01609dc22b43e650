"""The library's errors name its parameters (`max_new_tokens`); on the command line they are flags."""

from __future__ import annotations

import re

# Parameters of the Python API that the commands take as flags of the same name.
FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in ("max_new_tokens", "max_prompt_tokens", "top_p", "repetition_penalty")
}
_NAMES = re.compile(r"(?<![\w'-])(" + "|".join(FLAGS) + r")(?![\w'-])")  # not a quoted name, e.g. an expert's


def as_flags(message: str) -> str:
    """`message` with each parameter name spelt as its flag, e.g. "lower max_new_tokens" -> "lower --max-new-tokens"."""
    return _NAMES.sub(lambda m: FLAGS[m[1]], message)

"""What differs across the library versions etr-hub accepts (transformers ≥ 5.0, peft ≥ 0.17),
so that no deprecation warning reaches a user for something they cannot change."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def cache_kwarg(model: Any) -> str:
    """The keyword `model.forward` takes its KV cache by. transformers renamed `past_key_values`
    to `cache`; the old name still works until 5.40, with a FutureWarning."""
    cls: Any = type(model)
    return _cache_kwarg(cls)


@functools.cache
def _cache_kwarg(cls: Any) -> str:  # a model class: hashable, and its forward never changes
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


@contextmanager
def peft_deprecations_silenced() -> Iterator[None]:
    """peft (0.21) reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a
    model: their FutureWarning, about their code. Only that warning, only while peft wraps."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="`is_gradient_checkpointing` is deprecated",
            category=FutureWarning,
            module="transformers.modeling_utils",
        )
        yield

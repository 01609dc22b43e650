"""Experts load on first use and stay loaded under a memory budget, least recently used out.

The budget counts what experts hold beyond the meta model (a LoRA adapter on the meta model
counts only its LoRA matrices; a remote expert counts nothing). A failed load is remembered for
a short while, so a dead endpoint does not stall every answer that routes to it.
"""

from __future__ import annotations

import gc
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from etr_hub.backends import ExpertBackend, ExpertError, ExpertSpec, create_backend
from etr_hub.config import settings
from etr_hub.errors import EtrHubError

FAILURE_MEMORY_S = 30.0


def default_budget_bytes() -> int:
    """$ETR_HUB_EXPERT_MEMORY_MB, else half the machine's memory."""
    try:
        budget_mb = settings().expert_memory_mb
    except ValueError as exc:
        raise EtrHubError(str(exc), "set it to a size in MB, e.g. 8192, or unset it for half the RAM") from None
    if budget_mb is not None:
        return int(budget_mb * 2**20)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


class ExpertPool:
    def __init__(
        self,
        specs: dict[str, ExpertSpec],
        meta: Any,
        *,
        budget_bytes: int | None = None,
        status: Callable[[str], None] | None = None,
        factory: Callable[[ExpertSpec, Any], ExpertBackend] = create_backend,
    ):
        self.specs = specs
        self.meta = meta
        self.budget = default_budget_bytes() if budget_bytes is None else budget_bytes
        self.status = status
        self.factory = factory
        self.loaded: OrderedDict[str, ExpertBackend] = OrderedDict()
        self.failures: dict[str, tuple[float, ExpertError]] = {}

    def get(self, name: str) -> ExpertBackend:
        """The loaded backend for `name` (loading it, evicting others if over budget); raises ExpertError."""
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name]
        failed = self.failures.get(name)
        if failed is not None and time.monotonic() - failed[0] < FAILURE_MEMORY_S:
            raise failed[1]
        spec = self.specs.get(name)
        if spec is None:
            raise ExpertError(
                f"no expert named '{name}' is loaded in this hub",
                "see `etr-hub chat` /experts or `etr-hub expert list`",
            )
        if self.status is not None:
            self.status(f"loading expert {name}")
        try:
            backend = self.factory(spec, self.meta)
            backend.load()
        except ExpertError as exc:
            self.failures[name] = (time.monotonic(), exc)
            raise
        except Exception as exc:  # a backend bug must not lose the conversation either
            err = ExpertError(f"expert '{name}' failed to load: {type(exc).__name__}: {exc}")
            self.failures[name] = (time.monotonic(), err)
            raise err from exc
        self.failures.pop(name, None)
        self.loaded[name] = backend
        self._evict(keep=name)
        return backend

    def forget(self, name: str, error: ExpertError) -> None:
        """An expert failed while answering: unload it and remember the failure."""
        backend = self.loaded.pop(name, None)
        if backend is not None:
            backend.unload()
        self.failures[name] = (time.monotonic(), error)

    @property
    def used_bytes(self) -> int:
        return sum(b.memory_bytes for b in self.loaded.values())

    def _evict(self, keep: str) -> None:
        evicted = False
        while self.used_bytes > self.budget and len(self.loaded) > 1:
            oldest = next(n for n in self.loaded if n != keep)
            self.loaded.pop(oldest).unload()
            evicted = True
        if evicted:
            gc.collect()

    def close(self) -> None:
        for backend in self.loaded.values():
            backend.unload()
        self.loaded.clear()

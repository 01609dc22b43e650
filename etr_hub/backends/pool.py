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
from etr_hub.backends.health import HealthBook, HealthPolicy
from etr_hub.config import settings
from etr_hub.errors import EtrHubError

FAILURE_MEMORY_S = 30.0
HEALTH_TRACKED_KINDS = ("openai",)  # remote experts: N failures in a row take them out of routing


class ExpertCoolingDown(ExpertError):
    """The expert is out of routing for a cool-down (backends/health.py); not a new failure."""


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
        health: HealthPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.specs = specs
        self.meta = meta
        self.budget = default_budget_bytes() if budget_bytes is None else budget_bytes
        self.status = status
        self.factory = factory
        self.loaded: OrderedDict[str, ExpertBackend] = OrderedDict()
        self.failures: dict[str, tuple[float, ExpertError]] = {}
        self.clock = clock
        tracked = [n for n, spec in specs.items() if spec.ref.kind in HEALTH_TRACKED_KINDS]
        self.health = HealthBook((health or HealthPolicy()).check(), tracked)

    def get(self, name: str) -> ExpertBackend:
        """The loaded backend for `name` (loading it, evicting others if over budget); raises ExpertError."""
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name]
        cooling = self.cooling_down().get(name)
        if cooling is not None:
            raise ExpertCoolingDown(cooling, "it is probed again when its cool-down ends (see GET /health)")
        failed = self.failures.get(name)
        if failed is not None and not self.health.tracks(name) and time.monotonic() - failed[0] < FAILURE_MEMORY_S:
            raise failed[1]  # a tracked (remote) expert is tried again until its failures reach the cool-down
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
            self._failed(name, exc)
            raise
        except Exception as exc:  # a backend bug must not lose the conversation either
            err = ExpertError(f"expert '{name}' failed to load: {type(exc).__name__}: {exc}")
            self._failed(name, err)
            raise err from exc
        self.failures.pop(name, None)
        self.loaded[name] = backend
        self._evict(keep=name)
        return backend

    def forget(self, name: str, error: ExpertError) -> None:
        """An expert failed while answering: unload it and remember the failure."""
        if isinstance(error, ExpertCoolingDown):
            return  # it was not tried: nothing new to remember
        backend = self.loaded.pop(name, None)
        if backend is not None:
            backend.unload()
        self._failed(name, error)

    def succeeded(self, name: str) -> None:
        """An expert answered: its failures in a row start again from zero."""
        self.health.success(name)

    def _failed(self, name: str, error: ExpertError) -> None:
        recorded = self.failures.get(name)
        if recorded is not None and recorded[1] is error:
            return  # a failed load, recorded by get() and then forgotten by the answer: one failure
        self.failures[name] = (time.monotonic(), error)
        self.health.failure(name, error.problem, self.clock())

    def cooling_down(self) -> dict[str, str]:
        """Experts out of routing now (name -> why). Those whose cool-down is over are probed
        first (one short request each): one that answers is back in."""
        for name in self.health.due(self.clock()):
            self._probe(name)
        return self.health.cooling(self.clock())

    def _probe(self, name: str) -> None:
        try:
            backend = self.factory(self.specs[name], self.meta)
            probe = getattr(backend, "probe", None)
            if probe is not None:
                probe()
            else:
                backend.load()
                backend.unload()
        except Exception as exc:
            reason = exc.problem if isinstance(exc, EtrHubError) else f"{type(exc).__name__}: {exc}"
            self.health.probe_result(name, False, reason, self.clock())
        else:
            self.failures.pop(name, None)
            self.health.probe_result(name, True, "", self.clock())

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

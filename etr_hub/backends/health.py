"""Health-aware routing: an expert that fails N times in a row cools down, then is probed.

A pure state machine per expert, with the clock passed in (`now`, seconds, monotonic):

    ok ──N failures in a row──▶ cooling_down ──cool-down over──▶ probe due
     ▲                              ▲                              │
     └── an answer succeeds ──  probation ◀── the probe answers ───┤
                                    │                              │
                                    └── one failure ──▶ cooling_down ◀── the probe fails

While an expert cools down its token is out of the routing softmax (logit -inf), so its
questions go to the next-best candidate as if it were not registered. After the probe answers
it is back on probation: one more failure sends it straight back to cooling down.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from etr_hub.errors import EtrHubError

DEFAULT_FAILURES_BEFORE_COOLDOWN = 3
DEFAULT_COOLDOWN_S = 30.0


@dataclass(frozen=True)
class HealthPolicy:
    failures_before_cooldown: int = DEFAULT_FAILURES_BEFORE_COOLDOWN
    cooldown_s: float = DEFAULT_COOLDOWN_S

    def check(self) -> HealthPolicy:
        if isinstance(self.failures_before_cooldown, bool) or self.failures_before_cooldown < 1:
            raise EtrHubError(
                f"`failures_before_cooldown` must be at least 1 (got {self.failures_before_cooldown})",
                "pass e.g. `failures_before_cooldown=3`",
            )
        if not (math.isfinite(self.cooldown_s) and self.cooldown_s > 0):
            raise EtrHubError(
                f"`cooldown_s` must be a positive number of seconds (got {self.cooldown_s})",
                "pass e.g. `cooldown_s=30`",
            )
        return self


@dataclass
class ExpertHealth:
    """One expert's failures in a row and, once they reach the policy's N, its cool-down."""

    policy: HealthPolicy
    failures: int = 0  # in a row
    reason: str = ""  # the last failure's one-line problem
    cooling_until: float | None = None  # monotonic time the cool-down ends; None: routable

    def record_success(self) -> None:
        self.failures, self.reason, self.cooling_until = 0, "", None

    def record_failure(self, reason: str, now: float) -> None:
        self.failures += 1
        self.reason = reason
        if self.failures >= self.policy.failures_before_cooldown:
            self.cooling_until = now + self.policy.cooldown_s

    def record_probe(self, ok: bool, reason: str, now: float) -> None:
        """The probe after the cool-down: answered -> routable on probation (one failure cools it
        down again); failed -> another cool-down."""
        if ok:
            self.failures, self.cooling_until = self.policy.failures_before_cooldown - 1, None
        else:
            self.reason, self.cooling_until = reason, now + self.policy.cooldown_s

    def available(self, now: float) -> bool:
        """Routable: not cooling down (an expert whose cool-down ended stays out until a probe answers)."""
        return self.cooling_until is None

    def probe_due(self, now: float) -> bool:
        return self.cooling_until is not None and now >= self.cooling_until

    def seconds_left(self, now: float) -> float:
        return 0.0 if self.cooling_until is None else max(0.0, self.cooling_until - now)

    def message(self, name: str) -> str:
        return f"expert '{name}' is cooling down after {self.failures} failure(s) in a row: {self.reason}"

    def report(self, now: float) -> dict:
        if self.cooling_until is None:
            return {"state": "ok", "failures": self.failures}
        return {
            "state": "cooling_down",
            "failures": self.failures,
            "reason": self.reason,
            "seconds_left": round(self.seconds_left(now), 1),
        }


class HealthBook:
    """ExpertHealth per tracked expert name, safe to read from another thread (GET /health)."""

    def __init__(self, policy: HealthPolicy, names: list[str]):
        self.policy = policy
        self._lock = threading.Lock()
        self.experts = {name: ExpertHealth(policy) for name in names}

    def tracks(self, name: str) -> bool:
        return name in self.experts

    def success(self, name: str) -> None:
        with self._lock:
            if name in self.experts:
                self.experts[name].record_success()

    def failure(self, name: str, reason: str, now: float) -> None:
        with self._lock:
            if name in self.experts:
                self.experts[name].record_failure(reason, now)

    def probe_result(self, name: str, ok: bool, reason: str, now: float) -> None:
        with self._lock:
            self.experts[name].record_probe(ok, reason, now)

    def due(self, now: float) -> list[str]:
        with self._lock:
            return [n for n, h in self.experts.items() if h.probe_due(now)]

    def cooling(self, now: float) -> dict[str, str]:
        """Expert name -> why it is out of routing, for those cooling down now."""
        with self._lock:
            return {n: h.message(n) for n, h in self.experts.items() if not h.available(now)}

    def report(self, now: float) -> dict[str, dict]:
        with self._lock:
            return {n: h.report(now) for n, h in self.experts.items()}

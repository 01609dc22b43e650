"""`etr-hub expert tune`: the operator's calibration of the hub's routing, and what it does.

A bias per expert is added to its logit at the routing position and a minimum switch probability
(min_p) applies to all of them; both live in the registry, never in a bundle. A bias is set by
value, or found from the meta model's cached routing states: the lowest bias that takes
`target_recall` of the expert's own query set, or the highest (never above today's) that fires
on at most `max_false_fire` of the project's everyday prompts. Every change is reported as each
enabled expert's recall and false-fire rate before and after, computed exactly as the hub routes
(`routing_winners`), and the tuned expert's admission report is measured again and recorded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from etr_hub.errors import EtrHubError, RegistryError
from etr_hub.eval.admission import check_rate, readmission_report
from etr_hub.session import ModelSession, expert_row, query_set_queries, read_general_prompts

if TYPE_CHECKING:
    import torch

    from etr_hub.cache import RoutingStates
    from etr_hub.registry import Registry
    from etr_hub.registry.tables import Expert


@dataclass
class ExpertRates:
    name: str
    bias: float
    queries: int  # its query set (0: none in the store, recall is None)
    recall: float | None  # share of its own query set it takes
    false_fire: float | None  # share of the everyday prompts it takes (None: no prompts)


@dataclass
class TuneResult:
    name: str | None  # the expert tuned (None: only min_p)
    min_p_before: float
    min_p_after: float
    before: list[ExpertRates]
    after: list[ExpertRates]
    everyday: int
    applied: bool  # False for a dry run: nothing written
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class RoutingView:
    """The routing position of every enabled expert's query set and the everyday prompts, at once."""

    experts: list[Expert]
    spans: list[tuple[int, int]]  # experts' own query sets, then the everyday prompts last
    states: RoutingStates  # (B, C), (B,), (B,)
    w_e: torch.Tensor  # (N, C)

    def index(self, name: str) -> int:
        names = [e.name for e in self.experts]
        if name not in names:
            raise EtrHubError(
                f"expert '{name}' is not enabled: its routing cannot be measured",
                f"enable it first (`etr-hub expert enable {name}`), or set its bias by value (`bias`)",
            )
        return names.index(name)


def routing_view(registry: Registry, session: ModelSession, general: list[str] | None = None) -> RoutingView:
    import torch

    fp = session.meta_row.fingerprint
    experts = [e for e in registry.list_experts(enabled_only=True) if e.meta_fingerprint == fp]
    groups = [_own_queries(registry, e) for e in experts]
    groups.append(read_general_prompts(split="eval") if general is None else general)
    spans, start = [], 0
    for g in groups:
        spans.append((start, start + len(g)))
        start += len(g)
    states = session.routing_states([q for g in groups for q in g])
    hidden = int(session.meta_row.hidden_size)
    w_e = torch.cat([expert_row(registry, e) for e in experts]) if experts else torch.zeros(0, hidden)  # (N, C)
    return RoutingView(experts, spans, states, w_e)


def _own_queries(registry: Registry, expert: Expert) -> list[str]:
    qs = registry.query_set_for(expert)
    try:
        return query_set_queries(registry, qs) if qs is not None else []
    except (OSError, ValueError):
        return []


def rates(view: RoutingView, bias: torch.Tensor, min_p: float) -> list[ExpertRates]:
    """Each expert's recall on its own query set and false-fire rate, as the hub routes with these settings."""
    from etr_hub.routing.math import routing_winners

    h, lse, top = view.states
    winners = routing_winners(h, top, lse, view.w_e, bias, min_p)  # (B,) 0 or 1 + k
    everyday = view.spans[-1]

    def share(span: tuple[int, int], k: int) -> float | None:
        part = winners[span[0] : span[1]]  # (n,)
        return int((part == 1 + k).sum()) / len(part) if len(part) else None

    return [
        ExpertRates(
            e.name, float(bias[k]), view.spans[k][1] - view.spans[k][0], share(view.spans[k], k), share(everyday, k)
        )
        for k, e in enumerate(view.experts)
    ]


def find_bias(
    view: RoutingView,
    k: int,
    bias: torch.Tensor,
    min_p: float,
    target_recall: float | None,
    max_false_fire: float | None,
) -> float:
    """Expert k's bias for a target recall (the lowest that reaches it) and/or a false-fire limit (the
    highest within it, never above today's when no recall target is given)."""
    from etr_hub.routing.calibration import bias_for_share, bias_under_share, win_thresholds

    name = view.experts[k].name
    own, everyday = view.spans[k], view.spans[-1]
    thresholds = win_thresholds(view.states, view.w_e, bias, k, min_p)  # (B,)
    low, high = -math.inf, math.inf
    if target_recall is not None:
        if own[1] == own[0]:
            raise RegistryError(f"expert '{name}' has no query set in the store: no recall to aim at", "pass `bias`")
        low = bias_for_share(thresholds[own[0] : own[1]], target_recall)
        if low == math.inf:
            reach = float((thresholds[own[0] : own[1]] < math.inf).float().mean())
            raise EtrHubError(
                f"expert '{name}' cannot reach a recall of {target_recall:.0%}: at most {reach:.0%} of its query set "
                f"can route to it at `min_p={min_p:g}`",
                "lower `target_recall` (or `min_p`)",
            )
    if max_false_fire is not None:
        if everyday[1] == everyday[0]:
            raise EtrHubError("no everyday prompts to measure false fires on", "pass `target_recall` or `bias`")
        high = bias_under_share(thresholds[everyday[0] : everyday[1]], max_false_fire)
    if low > high:
        raise EtrHubError(
            f"expert '{name}' cannot have both: a recall of {target_recall:.0%} needs a bias of at least {low:.3f}, "
            f"a false-fire rate of at most {max_false_fire:.0%} allows at most {high:.3f}",
            "relax `target_recall` or `max_false_fire` (or retrain the token with more negatives)",
        )
    if target_recall is not None:
        return max(low, -1e3)  # share 0: a bias far below any logit gap (finite, so it can be stored)
    return min(high, float(bias[k]))


def check_request(
    name: str | None,
    bias: float | None,
    target_recall: float | None,
    max_false_fire: float | None,
    min_p: float | None,
) -> None:
    if bias is not None and not math.isfinite(bias):
        raise EtrHubError(f"`bias` must be a finite number (got {bias})", "pass e.g. `bias=-2.5` (logits)")
    check_rate("target_recall", target_recall)
    check_rate("max_false_fire", max_false_fire)
    check_rate("min_p", min_p)
    if bias is not None and (target_recall is not None or max_false_fire is not None):
        raise EtrHubError(
            "`bias` sets the bias itself; `target_recall` / `max_false_fire` find one", "pass either, not both"
        )
    asks = (bias, target_recall, max_false_fire)
    if name is None and any(a is not None for a in asks):
        raise EtrHubError(
            "a bias belongs to one expert", "name the expert to tune, e.g. `etr-hub expert tune astronomy`"
        )
    if all(a is None for a in asks) and min_p is None:
        raise EtrHubError("nothing to tune", "pass `bias`, `target_recall`, `max_false_fire` or `min_p`")


def tune(
    registry: Registry,
    name: str | None = None,
    *,
    bias: float | None = None,
    target_recall: float | None = None,
    max_false_fire: float | None = None,
    min_p: float | None = None,
    dry_run: bool = False,
    session: ModelSession | None = None,
) -> TuneResult:
    """Set (or find) `name`'s bias and/or the hub's min_p, and report each expert before and after."""
    import torch

    check_request(name, bias, target_recall, max_false_fire, min_p)
    target = registry.get_expert(name) if name is not None else None
    session = session or ModelSession(registry)
    view = routing_view(registry, session)
    old_bias = torch.tensor([float(e.bias) for e in view.experts])  # (N,)
    old_min_p = float(session.meta_row.min_p)
    new_min_p = old_min_p if min_p is None else float(min_p)
    new_bias = old_bias.clone()
    value = bias
    if target is not None and bias is None and (target_recall is not None or max_false_fire is not None):
        k = view.index(target.name)
        value = find_bias(view, k, old_bias, new_min_p, target_recall, max_false_fire)
    if target is not None and value is not None and target.name in [e.name for e in view.experts]:
        new_bias[view.index(target.name)] = value
    result = TuneResult(
        target.name if target else None,
        old_min_p,
        new_min_p,
        rates(view, old_bias, old_min_p),
        rates(view, new_bias, new_min_p),
        view.spans[-1][1] - view.spans[-1][0],
        applied=not dry_run,
    )
    if not dry_run:
        _apply(registry, session, target, value, min_p, result)
    return result


def _apply(
    registry: Registry,
    session: ModelSession,
    target: Expert | None,
    value: float | None,
    min_p: float | None,
    result: TuneResult,
) -> None:
    """Write the settings, then measure the changed experts' admission reports again and record them."""
    if min_p is not None:
        session.meta_row = registry.set_min_p(float(min_p))
    if target is not None and value is not None:
        target = registry.set_bias(f"{target.name}@{target.version}", float(value))
    changed = [
        e for e in registry.list_experts(enabled_only=True) if min_p is not None or (target and e.id == target.id)
    ]
    for e in changed:
        try:
            report = readmission_report(registry, e, session=session)
        except (EtrHubError, OSError) as exc:
            result.warnings.append(f"{e.name}: admission report not measured again ({exc})")
            continue
        registry.set_bias(f"{e.name}@{e.version}", float(e.bias), admission=report.to_json())

"""The admission report: what a new expert token does at the routing position before it is registered.

From the meta model's cached routing states (one meta pass per query never seen before, then none)
and one matmul per query, h @ [W_E; e]^T: the new token's recall on its own query set, the share of
each enabled expert's query set it would take (and that expert's recall before and after), and how
often it fires on the project's everyday prompts. A routing position goes to an expert as greedy decoding
decides it (`routing_winners`: its logit above every word logit), with the operators' biases and min_p
(`expert tune`). `add_with_report` runs it between a bundle's
validation and its registration; `max_steal` / `max_false_fire` refuse a bundle that exceeds them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from etr_hub.errors import BundleError, DataError, EtrHubError, RegistryError
from etr_hub.jsonl import query_column
from etr_hub.session import ModelSession, expert_row, query_set_queries, read_general_prompts

if TYPE_CHECKING:
    import torch

    from etr_hub.bundle import Bundle
    from etr_hub.registry import Registry
    from etr_hub.registry.tables import Expert

NO_REPORT_FIX = "add it without an admission report (`no_report`)"


@dataclass
class ExpertImpact:
    """One registered expert's query set with the new token in place."""

    name: str
    queries: int
    steal: float  # share of its queries the new token would win
    recall_before: float  # share its own token wins today
    recall_after: float  # ... and with the new token registered


@dataclass
class AdmissionReport:
    name: str
    version: str
    queries: int  # the new bundle's query set
    recall: float  # share of them the new token wins
    everyday: int  # everyday prompts measured (0: none, false_fire is None)
    false_fire: float | None
    experts: list[ExpertImpact] = field(default_factory=list)
    bias: float = 0.0  # the new expert's calibration bias it was measured at (0 at `expert add`)
    min_p: float = 0.0  # the registry's minimum switch probability it was measured at

    @property
    def max_steal(self) -> float:
        return max((e.steal for e in self.experts), default=0.0)

    def to_json(self) -> dict:
        return {**asdict(self), "max_steal": self.max_steal}


class AdmissionRefused(BundleError):
    """A bundle over `max_steal` / `max_false_fire`: nothing registered; the report comes with it."""

    def __init__(self, problem: str, fix: str, report: AdmissionReport):
        super().__init__(problem, fix)
        self.report = report


class _CheckedOnly(Exception):  # control flow out of the registry's add (--check-only), never shown
    def __init__(self, report: AdmissionReport):
        self.report = report


def admission_numbers(
    before: torch.Tensor, after: torch.Tensor, spans: Sequence[tuple[int, int]], n_experts: int
) -> tuple[float, list[tuple[float, float, float]], float | None]:
    """From the winners (B,) before/after (0 or 1 + expert index, `admission_winners`) and the row spans of
    [own query set, expert 0's, …, expert N-1's, everyday prompts]: (recall of the new token,
    [(steal, recall before, recall after)] per expert, false-fire rate or None without prompts)."""
    new = 1 + n_experts

    def share(winners: torch.Tensor, span: tuple[int, int], index: int) -> float:
        part = winners[span[0] : span[1]]  # (n,)
        return int((part == index).sum()) / len(part) if len(part) else 0.0  # exact: 3/5 is 0.6

    own, *others, everyday = spans
    impacts = [(share(after, s, new), share(before, s, 1 + k), share(after, s, 1 + k)) for k, s in enumerate(others)]
    false_fire = share(after, everyday, new) if everyday[1] > everyday[0] else None
    return share(after, own, new), impacts, false_fire


def _others(registry: Registry, name: str) -> list[tuple[Expert, list[str]]]:
    """The enabled experts the new one would sit beside (another version of its own name is replaced)."""
    found = []
    for e in registry.list_experts(enabled_only=True):
        if e.name == name:
            continue
        qs = registry.query_set_for(e)
        try:
            queries = query_set_queries(registry, qs) if qs is not None else []
        except (OSError, DataError):
            queries = []
        if not queries:
            raise RegistryError(
                f"expert '{e.name}' has no query set in the registry's store: its admission numbers cannot be computed",
                NO_REPORT_FIX,
            )
        found.append((e, queries))
    return found


def admission_report(
    registry: Registry, bundle: Bundle, *, session: ModelSession | None = None, general: list[str] | None = None
) -> AdmissionReport:
    """The report for `bundle` (validated, not yet registered) against the registry's enabled experts.
    `general`: the everyday prompts (default: the project's, split 'eval')."""
    from etr_hub.bundle.io import read_token

    m = bundle.manifest
    try:
        own = query_column(bundle.query_set_path) if bundle.query_set_path else []
    except DataError:
        own = []
    if not own:
        raise BundleError(f"bundle {bundle.root}: its query set is missing or empty", NO_REPORT_FIX)
    row = read_token(bundle.root, bundle.token_path, m).float().reshape(1, -1)  # (1, C)
    return _report(registry, m.name, m.version, own, row, 0.0, session=session, general=general)


def readmission_report(registry: Registry, expert: Expert, *, session: ModelSession | None = None) -> AdmissionReport:
    """The report of a registered expert as it routes now (its bias, the registry's min_p) against the
    other enabled experts: what `expert tune` records after a change."""
    qs = registry.query_set_for(expert)
    own = query_set_queries(registry, qs) if qs is not None else []
    if not own:
        raise RegistryError(f"expert '{expert.name}' has no query set in the registry's store", NO_REPORT_FIX)
    row = expert_row(registry, expert).reshape(1, -1)  # (1, C)
    return _report(registry, expert.name, expert.version, own, row, float(expert.bias), session=session)


def _report(
    registry: Registry,
    name: str,
    version: str,
    own: list[str],
    row: torch.Tensor,
    row_bias: float,
    *,
    session: ModelSession | None = None,
    general: list[str] | None = None,
) -> AdmissionReport:
    import torch

    from etr_hub.routing.math import admission_winners

    others = _others(registry, name)
    general = read_general_prompts(split="eval") if general is None else general
    groups = [own, *(q for _, q in others), general]
    spans, start = [], 0
    for g in groups:
        spans.append((start, start + len(g)))
        start += len(g)
    session = session or ModelSession(registry)
    states = session.routing_states([q for g in groups for q in g])  # (B, C), (B,), (B,)
    w_e = torch.cat([expert_row(registry, e) for e, _ in others]) if others else torch.zeros(0, row.shape[1])
    bias = torch.tensor([float(e.bias) for e, _ in others])  # (N,)
    min_p = float(session.meta_row.min_p)
    before, after = admission_winners(states, w_e, bias, row, row_bias, min_p)  # (B,), (B,)
    recall, impacts, false_fire = admission_numbers(before, after, spans, len(others))
    return AdmissionReport(
        name=name,
        version=version,
        queries=len(own),
        recall=recall,
        everyday=len(general),
        false_fire=false_fire,
        experts=[ExpertImpact(e.name, len(q), *nums) for (e, q), nums in zip(others, impacts)],
        bias=row_bias,
        min_p=min_p,
    )


def check_rate(param: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and 0 <= value <= 1):
        raise EtrHubError(f"`{param}` must be a share between 0 and 1 (got {value:g})", f"pass e.g. `{param}=0.2`")


def check_limits(report: AdmissionReport, max_steal: float | None, max_false_fire: float | None) -> None:
    """AdmissionRefused where the report exceeds a limit."""
    worst = max(report.experts, key=lambda e: e.steal, default=None)
    if max_steal is not None and worst is not None and worst.steal > max_steal:
        raise AdmissionRefused(
            f"expert '{report.name}' would take {worst.steal:.0%} of '{worst.name}''s queries "
            f"(over `max_steal={max_steal:g}`): not registered",
            "retrain its token with the other experts' queries as negatives, or raise the limit",
            report,
        )
    if max_false_fire is not None and report.false_fire is not None and report.false_fire > max_false_fire:
        raise AdmissionRefused(
            f"expert '{report.name}' would fire on {report.false_fire:.0%} of the everyday prompts "
            f"(over `max_false_fire={max_false_fire:g}`): not registered",
            "retrain its token with the everyday prompts as negatives, or raise the limit",
            report,
        )


def add_with_report(
    registry: Registry,
    source: Bundle | Path | str,
    *,
    check_only: bool = False,
    max_steal: float | None = None,
    max_false_fire: float | None = None,
    session: ModelSession | None = None,
    device: str | None = None,
    dtype: str | None = None,
    **add_options,
) -> tuple[Expert | None, AdmissionReport]:
    """Validate `source`, compute its admission report, refuse it over a limit, register it unless
    `check_only` (then the expert is None). `device` / `dtype`: where the meta model's pass runs
    (models/device.py). `add_options`: as `Registry.add_expert`."""
    check_rate("max_steal", max_steal)
    check_rate("max_false_fire", max_false_fire)
    session = session or ModelSession(registry, device=device, dtype=dtype)
    reports: list[AdmissionReport] = []

    def admit(bundle: Bundle) -> dict:
        report = admission_report(registry, bundle, session=session)
        reports.append(report)
        check_limits(report, max_steal, max_false_fire)
        if check_only:
            raise _CheckedOnly(report)
        return report.to_json()  # recorded with the expert

    try:
        row = registry.add_expert(source, admit=admit, **add_options)
    except _CheckedOnly as done:
        return None, done.report
    return row, reports[-1]

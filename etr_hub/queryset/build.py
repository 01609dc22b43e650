"""`query-set build`: score a dataset with the meta model and the expert, select, record.

The meta model's per-example losses (and routing states) are cached by (meta fingerprint,
dataset sha256), so a second expert built from the same dataset pays only for its own pass.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from etr_hub.cache import LossCache, RoutingStates, query_key
from etr_hub.errors import DataError, EtrHubError
from etr_hub.models.refs import ModelRef
from etr_hub.models.scoring import MAX_TOKENS
from etr_hub.queryset import select
from etr_hub.queryset.dataset import Dataset, read_dataset
from etr_hub.registry import Registry
from etr_hub.session import ModelSession, ProgressFactory, Status, no_progress
from etr_hub.store import sha256_bytes, tree_listing, tree_sha256


@dataclass(frozen=True)
class QuerySetSpec:
    """What to score: the expert, the dataset, the models it must beat besides the meta model."""

    name: str  # the query set is stored under the expert's name
    expert: str | ModelRef
    data: str | Path  # JSONL with 'query' and 'response' (optionally a label)
    versus: tuple[str | ModelRef, ...] = ()  # other experts or a style-control adapter to beat too
    batch_size: int = 8
    max_tokens: int = MAX_TOKENS  # longest row scored (prompt + response): longer responses are cut

    def __post_init__(self) -> None:
        if self.max_tokens < 2:
            raise EtrHubError(
                f"`max_tokens` must be at least 2 (got {self.max_tokens})", f"pass e.g. `max_tokens={MAX_TOKENS}`"
            )


@dataclass(frozen=True)
class SelectionRule:
    """Which scored rows become the query set."""

    rule: str = "paper"  # "paper": loss gap > tau (eq. 3); "labelled": the rows labelled `label`
    tau: float = 0.0  # nats, summed over the response
    size: int = 100  # at most this many queries (the paper: 100)
    seed: int = 0
    pick: str = "random"  # "random": down-sample the passing rows with `seed` (the paper); "top": largest gaps
    label: str | None = None  # the expert's domain: purity, in-/out-of-domain gaps, and the "labelled" rule
    label_field: str = "label"  # the dataset field holding the labels

    def __post_init__(self) -> None:
        if self.rule not in ("paper", "labelled"):
            raise EtrHubError(f"unknown selection `rule` '{self.rule}'", "use `rule=paper` or `rule=labelled`")
        if self.size < 1:
            raise EtrHubError(f"`size` must be at least 1 (got {self.size})", "pass e.g. `size=100`")
        if self.pick not in ("random", "top"):
            raise EtrHubError(
                f"unknown `pick` '{self.pick}'", "use `pick=random` (the paper) or `pick=top` (largest gaps first)"
            )
        if self.rule == "labelled" and not self.label:
            raise EtrHubError(
                "`rule=labelled` needs `label`", "pass the label of the expert's domain, e.g. `label=astronomy`"
            )


@dataclass
class BuildResult:
    name: str
    rule: str
    tau: float | None
    selected: list[int]
    dataset: Dataset
    gap_stats: dict
    tau_table: list[dict]
    purity: float | None
    in_domain_gap: float | None
    out_of_domain_gap: float | None
    info: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    max_tokens: int = MAX_TOKENS
    skipped_lines: list[int] = field(default_factory=list)  # rows over max_tokens, by file line


@dataclass
class Scores:
    """Per dataset row (N,): NaN where a model skipped the row (over `max_tokens`)."""

    loss_meta: torch.Tensor
    loss_expert: torch.Tensor
    gap: torch.Tensor  # min(loss_meta, loss of each `versus` model) - loss_expert


def expert_cache_key(ref: ModelRef, meta_fingerprint: str) -> str:
    """Identity of an expert's weights for the loss cache."""
    parts = {
        "ref": ref.model_dump(mode="json", exclude_none=True),
        "meta": meta_fingerprint if ref.kind == "peft" and ref.base is None else None,
    }
    if ref.kind in ("local", "peft", "gguf") and ref.path and Path(ref.path).exists():
        p = Path(ref.path)
        parts["files"] = (
            tree_sha256(tree_listing(p)) if p.is_dir() else tree_sha256({p.name: sha256_bytes(p.read_bytes())})
        )
    return sha256_bytes(json.dumps(parts, sort_keys=True).encode())


def _loss_key(model_key: str, max_tokens: int, dtype: str = "float32") -> str:
    """The loss cache key: another row limit cuts other rows, another dtype rounds otherwise, so
    each keys other losses (the defaults keep the keys of before)."""
    if max_tokens != MAX_TOKENS:
        model_key = sha256_bytes(f"{model_key}:max_tokens={max_tokens}".encode())
    return model_key if dtype == "float32" else sha256_bytes(f"{model_key}:dtype={dtype}".encode())


def _row_limit(loaded, max_tokens: int) -> int:
    from etr_hub.generation.modelinfo import context_limit

    return min(max_tokens, context_limit(loaded.model, loaded.tokenizer))


def meta_pass(
    session: ModelSession, dataset: Dataset, progress: ProgressFactory, batch_size: int, max_tokens: int = MAX_TOKENS
):
    """Meta losses on the dataset (NaN: a row over `max_tokens`), from the cache or one pass that
    also caches routing states."""
    from etr_hub.models.scoring import encode_pairs, score_pairs

    fp = session.meta_row.fingerprint
    cache = LossCache(session.registry.settings.cache_dir)
    cached = cache.get(_loss_key(fp, max_tokens, session.dtype), dataset.sha256)
    if cached is not None:
        return cached
    meta = session.meta
    queries, responses = [r["query"] for r in dataset.rows], [r["response"] for r in dataset.rows]
    pairs = encode_pairs(meta.tokenizer, queries, responses, _row_limit(meta, max_tokens))
    result = score_pairs(
        meta.model,
        meta.tokenizer,
        pairs,
        batch_size=batch_size,
        want_states=True,
        advance=progress("meta model pass", len(pairs)),
    )
    kept = [i for i, pair in enumerate(pairs) if pair is not None]
    assert result.states is not None  # want_states
    if kept:
        session.states.put([query_key(queries[i]) for i in kept], RoutingStates(*(t[kept] for t in result.states)))
    session.cache_mean_row()
    cache.put(_loss_key(fp, max_tokens, session.dtype), dataset.sha256, result.loss)
    return result.loss


def expert_pass(
    session: ModelSession,
    ref: ModelRef,
    dataset: Dataset,
    progress: ProgressFactory,
    batch_size: int,
    warnings: list[str],
    max_tokens: int = MAX_TOKENS,
):
    from etr_hub.models.chat import has_chat_template
    from etr_hub.models.scoring import encode_pairs, score_pairs

    key = _loss_key(expert_cache_key(ref, session.meta_row.fingerprint), max_tokens, session.dtype)
    cache = LossCache(session.registry.settings.cache_dir)
    cached = cache.get(key, dataset.sha256)
    if cached is not None:
        return cached
    expert = session.expert(ref)
    if not has_chat_template(expert.tokenizer):
        warnings.append(f"expert {ref.display()} has no chat template; scoring it on a plain 'User:/Assistant:' format")
    pairs = encode_pairs(
        expert.tokenizer,
        [r["query"] for r in dataset.rows],
        [r["response"] for r in dataset.rows],
        _row_limit(expert, max_tokens),
    )
    loss = score_pairs(
        expert.model, expert.tokenizer, pairs, batch_size=batch_size, advance=progress("expert pass", len(pairs))
    ).loss
    cache.put(key, dataset.sha256, loss)
    return loss


def build_query_set(
    registry: Registry,
    spec: QuerySetSpec,
    rule: SelectionRule = SelectionRule(),
    *,
    progress: ProgressFactory = no_progress,
    status: Status = None,
    session: ModelSession | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> BuildResult:
    """Score `spec.data` with the meta model and the expert, select the query set by `rule`, record it.

    Rows longer than `max_tokens` (prompt + response, or the model's context if smaller) have
    their response cut; a row whose prompt alone does not fit is skipped and reported.
    Pass a `session` to reuse already loaded models across builds (recipes, benchmarks), or
    `device` / `dtype` for where a new one runs them (models/device.py)."""
    ref = _model_ref(spec.expert)
    versus = [_model_ref(v) for v in spec.versus]
    dataset = read_dataset(spec.data)
    session = session or ModelSession(registry, status, device=device, dtype=dtype)
    warnings: list[str] = []
    scores = _score(session, spec, ref, versus, dataset, progress, warnings)
    kept, skipped = _rows_that_fit(scores.gap, dataset, spec.max_tokens, warnings)
    gap = scores.gap[kept]  # (K,): selection runs on the rows that fit; indices map back through `kept`
    all_labels = dataset.labels(rule.label_field)
    labels = [all_labels[i] for i in kept]
    table = select.tau_table(gap)
    if rule.tau not in {row["tau"] for row in table}:
        table.append({"tau": rule.tau, "passing": int((gap > rule.tau).sum())})
    chosen = [kept[i] for i in _choose(rule, gap, labels, table, dataset)]
    in_dom, out_dom = _domain_gaps(gap, labels, rule.label)
    result = BuildResult(
        name=spec.name,
        rule=rule.rule,
        tau=rule.tau if rule.rule == "paper" else None,
        selected=chosen,
        dataset=dataset,
        gap_stats=select.gap_stats(gap),
        tau_table=table,
        purity=select.purity(chosen, all_labels, rule.label) if rule.label else None,
        in_domain_gap=in_dom,
        out_of_domain_gap=out_dom,
        warnings=warnings,
        max_tokens=spec.max_tokens,
        skipped_lines=skipped,
    )
    _record(registry, session.meta_row.fingerprint, result, rule, ref, versus, scores)
    return result


def _model_ref(ref: str | ModelRef) -> ModelRef:
    """A reference with local paths made absolute (the query set records where the expert was)."""
    ref = ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
    if ref.path and ref.kind in ("local", "peft", "gguf"):
        return ref.model_copy(update={"path": str(Path(ref.path).expanduser().resolve())})
    return ref


def _score(
    session: ModelSession,
    spec: QuerySetSpec,
    ref: ModelRef,
    versus: list[ModelRef],
    dataset: Dataset,
    progress: ProgressFactory,
    warnings: list[str],
) -> Scores:
    loss_meta = meta_pass(session, dataset, progress, spec.batch_size, spec.max_tokens)
    loss_expert = expert_pass(session, ref, dataset, progress, spec.batch_size, warnings, spec.max_tokens)
    baseline = loss_meta
    for v in versus:  # "better than the meta model AND than these models": expertise, not a shared style
        loss_v = expert_pass(session, v, dataset, progress, spec.batch_size, warnings, spec.max_tokens)
        baseline = torch.minimum(baseline, loss_v)
    return Scores(loss_meta, loss_expert, select.loss_gap(baseline, loss_expert))  # (N,) NaN where skipped


def _rows_that_fit(
    full_gap: torch.Tensor, dataset: Dataset, max_tokens: int, warnings: list[str]
) -> tuple[list[int], list[int]]:
    """(indices of the rows every model scored, file lines of the rows some model skipped)."""
    kept = [i for i, g in enumerate(full_gap.tolist()) if g == g]
    skipped = [dataset.line(i) for i in range(len(dataset.rows)) if full_gap[i] != full_gap[i]]
    if not kept:
        raise DataError(
            f"every row of {dataset.path} is over {max_tokens:,} tokens (the query alone, in a model's chat template)",
            "shorten the queries, or raise `max_tokens` (at most the models' context)",
        )
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (", …" if len(skipped) > 10 else "")
        warnings.append(
            f"skipped {len(skipped):,} row(s) over {max_tokens:,} tokens (lines {shown}); "
            "raise `max_tokens` to keep them"
        )
    return kept, skipped


def _choose(
    rule: SelectionRule, gap: torch.Tensor, labels: list[str | None], table: list[dict], dataset: Dataset
) -> list[int]:
    """Indices into `gap` (the rows that fit) of the query set; a DataError when none is chosen."""
    if rule.rule == "paper":
        chosen = select.select_by_tau(gap, rule.tau, rule.size, rule.seed, top=rule.pick == "top")
        if not chosen:
            raise DataError(
                f"τ={rule.tau:g} selects no query (loss-gap quantiles {select.gap_stats(gap)['quantiles']}; "
                + "passing at τ: "
                + ", ".join(f"{r['tau']:g}→{r['passing']}" for r in table)
                + ")",
                f"lower τ, e.g. `tau={select.suggest_tau(gap, rule.size):g}`",
            )
        return chosen
    assert rule.label is not None  # SelectionRule refuses the labelled rule without one
    chosen = select.select_by_label(labels, rule.label, rule.size, rule.seed)
    if not chosen:
        raise DataError(
            f"no row of {dataset.path} has {rule.label_field} == '{rule.label}'",
            f"check `label` and `label_field` (the dataset's '{rule.label_field}' values are the labels)",
        )
    return chosen


def _domain_gaps(gap: torch.Tensor, labels: list[str | None], label: str | None) -> tuple[float | None, float | None]:
    """Mean loss gap on the rows labelled `label` and on the others: a high gap everywhere is style."""
    if not label or all(lab is None for lab in labels):
        return None, None
    mask = torch.tensor([lab == label for lab in labels])
    in_dom = float(gap[mask].mean()) if mask.any() else None
    out_dom = float(gap[~mask].mean()) if (~mask).any() else None
    return in_dom, out_dom


def _record(
    registry: Registry,
    meta_fingerprint: str,
    result: BuildResult,
    rule: SelectionRule,
    ref: ModelRef,
    versus: list[ModelRef],
    scores: Scores,
) -> None:
    """Store the query set (one JSON row per selected query, with its losses) and its provenance."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows(result, rule.label_field, scores))
    info = {
        "file": "query_set.jsonl",
        "sha256": sha256_bytes(text.encode()),
        "size": len(result.selected),
        "tau": result.tau,
        "selection_rule": _rule_text(rule, versus),
        "seed": rule.seed,
        "source": {"name": result.dataset.name, "sha256": result.dataset.sha256, "n_pairs": len(result.dataset.rows)},
        "loss_gap": result.gap_stats,
        "label": rule.label,
        "purity": result.purity,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "query_set.jsonl"
        path.write_text(text, encoding="utf-8")
        registry.add_query_set(
            name=result.name,
            meta_fingerprint=meta_fingerprint,
            file=path,
            info={k: v for k, v in info.items() if v is not None},
            expert_ref=ref.model_dump(mode="json", exclude_none=True),
        )
    result.info = info


def _rows(result: BuildResult, label_field: str, scores: Scores) -> list[dict]:
    rows = []
    for i in result.selected:
        row = {
            "query": result.dataset.rows[i]["query"],
            "response": result.dataset.rows[i]["response"],
            "loss_meta": round(float(scores.loss_meta[i]), 4),
            "loss_expert": round(float(scores.loss_expert[i]), 4),
            "gap": round(float(scores.gap[i]), 4),
        }
        if result.dataset.rows[i].get(label_field) is not None:
            row["label"] = result.dataset.rows[i][label_field]
        rows.append(row)
    return rows


def _provenance(ref: ModelRef) -> str:
    """A `--versus` model as a bundle may carry it: a local model by its folder's name (`peft:arithmetic`), not
    the builder's absolute path, which means nothing to the operator and tells them about the builder's disk."""
    if ref.path and ref.kind in ("local", "peft", "gguf"):
        return f"{ref.kind}:{Path(ref.path).name}"
    return ref.display()


def _rule_text(rule: SelectionRule, versus: list[ModelRef]) -> str:
    """The selection rule as the manifest records it."""
    if rule.rule == "labelled":
        return f"{rule.label_field} == '{rule.label}'"
    baseline = (
        "min(" + ", ".join(["loss_meta"] + [f"loss[{_provenance(v)}]" for v in versus]) + ")" if versus else "loss_meta"
    )
    return f"{baseline} - loss_expert > tau" + ("; largest gaps first" if rule.pick == "top" else "")

"""`query-set build`: score a dataset with the meta model and the expert, select, record.

The meta model's per-example losses (and routing states) are cached by (meta fingerprint,
dataset sha256), so a second expert built from the same dataset pays only for its own pass.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from etr_hub.cache import LossCache, StateCache, query_key
from etr_hub.errors import DataError, EtrHubError
from etr_hub.models.refs import ModelRef
from etr_hub.queryset import select
from etr_hub.queryset.dataset import Dataset, read_dataset
from etr_hub.queryset.scoring import MAX_TOKENS
from etr_hub.registry import Registry
from etr_hub.store import sha256_bytes, tree_listing, tree_sha256

# progress(description, total) -> advance(n): the CLI passes a rich bar, the library a no-op.
ProgressFactory = Callable[[str, int], Callable[[int], None]]


def no_progress(_description: str, _total: int) -> Callable[[int], None]:
    return lambda _n: None


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


class ModelSession:
    """Loads the registry's meta model (and experts on it) at most once, checking its identity."""

    def __init__(self, registry: Registry, progress: Callable[[str], None] | None = None):
        self.registry = registry
        self.meta_row = registry.require_meta()
        self.progress = progress
        self._meta = None

    @property
    def meta(self):
        if self._meta is None:
            from etr_hub.models.fingerprint import meta_fingerprint
            from etr_hub.models.loading import load_causal_lm

            loaded = load_causal_lm(
                ModelRef.model_validate(self.meta_row.reference), progress=self.progress, role="meta"
            )
            if meta_fingerprint(loaded.model) != self.meta_row.fingerprint:
                raise EtrHubError(
                    f"the meta model at {self.meta_row.display} is not the one the registry recorded (fingerprint changed)",
                    "re-run `etr-hub init --meta REF` with the original model, or retrain the experts",
                )
            self._meta = loaded
        return self._meta

    def expert(self, ref: ModelRef):
        from etr_hub.models.loading import load_causal_lm

        needs_meta = ref.kind == "peft" and ref.base is None
        return load_causal_lm(ref, meta=self.meta if needs_meta else None, progress=self.progress)


def _loss_key(model_key: str, max_tokens: int) -> str:
    """The loss cache key: another row limit cuts other rows, so it keys other losses."""
    return model_key if max_tokens == MAX_TOKENS else sha256_bytes(f"{model_key}:max_tokens={max_tokens}".encode())


def _row_limit(loaded, max_tokens: int) -> int:
    from etr_hub.generation.modelinfo import context_limit

    return min(max_tokens, context_limit(loaded.model, loaded.tokenizer))


def meta_pass(
    session: ModelSession, dataset: Dataset, progress: ProgressFactory, batch_size: int, max_tokens: int = MAX_TOKENS
):
    """Meta losses on the dataset (NaN: a row over `max_tokens`), from the cache or one pass that
    also caches routing states."""
    from etr_hub.models.fingerprint import output_embedding
    from etr_hub.queryset.scoring import encode_pairs, score_pairs

    fp = session.meta_row.fingerprint
    cache = LossCache(session.registry.settings.cache_dir)
    cached = cache.get(_loss_key(fp, max_tokens), dataset.sha256)
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
    states = StateCache(session.registry.settings.cache_dir, fp)
    if kept:
        states.put([query_key(queries[i]) for i in kept], result.hidden[kept], result.lse[kept])
    states.put_mean_row(output_embedding(meta.model))
    cache.put(_loss_key(fp, max_tokens), dataset.sha256, result.loss)
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
    from etr_hub.queryset.scoring import encode_pairs, score_pairs

    key = _loss_key(expert_cache_key(ref, session.meta_row.fingerprint), max_tokens)
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
    name: str,
    expert: str | ModelRef,
    data: str | Path,
    *,
    tau: float = 0.0,
    size: int = 100,
    seed: int = 0,
    label: str | None = None,
    label_field: str = "label",
    rule: str = "paper",
    versus: tuple = (),
    pick: str = "random",
    batch_size: int = 8,
    progress: ProgressFactory = no_progress,
    status: Callable[[str], None] | None = None,
    session: ModelSession | None = None,
    max_tokens: int = MAX_TOKENS,
) -> BuildResult:
    """Score `data` with the meta model and the expert, select the query set, record it.

    Rows longer than `max_tokens` (prompt + response, or the model's context if smaller) have
    their response cut; a row whose prompt alone does not fit is skipped and reported.
    Pass a `session` to reuse already loaded models across builds (recipes, benchmarks)."""
    import torch

    if rule not in ("paper", "labelled"):
        raise EtrHubError(f"unknown selection rule '{rule}'", "use --rule paper or --rule labelled")
    if size < 1:
        raise EtrHubError(f"--size must be at least 1 (got {size})", "pass e.g. --size 100")
    if pick not in ("random", "top"):
        raise EtrHubError(
            f"unknown --pick '{pick}'", "use --pick random (the paper) or --pick top (largest gaps first)"
        )
    if max_tokens < 2:
        raise EtrHubError(f"--max-tokens must be at least 2 (got {max_tokens})", f"pass e.g. --max-tokens {MAX_TOKENS}")
    if rule == "labelled" and not label:
        raise EtrHubError(
            "--rule labelled needs --label", "pass the label of the expert's domain, e.g. --label astronomy"
        )
    ref = expert if isinstance(expert, ModelRef) else ModelRef.parse(expert)
    ref = _absolute(ref)
    dataset = read_dataset(data)
    session = session or ModelSession(registry, status)
    warnings: list[str] = []
    loss_meta = meta_pass(session, dataset, progress, batch_size, max_tokens)
    loss_expert = expert_pass(session, ref, dataset, progress, batch_size, warnings, max_tokens)
    versus_refs = [_absolute(v if isinstance(v, ModelRef) else ModelRef.parse(v)) for v in versus]
    baseline = loss_meta
    for v in versus_refs:  # "better than the meta model AND than these models": expertise, not a shared style
        baseline = torch.minimum(baseline, expert_pass(session, v, dataset, progress, batch_size, warnings, max_tokens))
    full_gap = select.loss_gap(baseline, loss_expert)  # (N,) NaN where a model skipped the row
    kept = [i for i, g in enumerate(full_gap.tolist()) if g == g]
    skipped = [dataset.line(i) for i in range(len(dataset.rows)) if full_gap[i] != full_gap[i]]
    if not kept:
        raise DataError(
            f"every row of {dataset.path} is over {max_tokens:,} tokens (the query alone, in a model's chat template)",
            "shorten the queries, or raise --max-tokens (at most the models' context)",
        )
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (", …" if len(skipped) > 10 else "")
        warnings.append(
            f"skipped {len(skipped):,} row(s) over {max_tokens:,} tokens (lines {shown}); raise --max-tokens to keep them"
        )
    gap = full_gap[kept]  # (K,): selection runs on the rows that fit; indices map back through `kept`
    all_labels = dataset.labels(label_field)
    labels = [all_labels[i] for i in kept]
    table = select.tau_table(gap)
    if tau not in {row["tau"] for row in table}:
        table.append({"tau": tau, "passing": int((gap > tau).sum())})
    if rule == "paper":
        chosen = [kept[i] for i in select.select_by_tau(gap, tau, size, seed, top=pick == "top")]
        if not chosen:
            raise DataError(
                f"τ={tau:g} selects no query (loss-gap quantiles {select.gap_stats(gap)['quantiles']}; passing at τ: "
                + ", ".join(f"{r['tau']:g}→{r['passing']}" for r in table)
                + ")",
                f"lower τ, e.g. --tau {select.suggest_tau(gap, size):g}",
            )
    else:
        chosen = [kept[i] for i in select.select_by_label(labels, label, size, seed)]
        if not chosen:
            raise DataError(
                f"no row of {dataset.path} has {label_field} == '{label}'",
                f"check --label and --label-field (the dataset's '{label_field}' values are the labels)",
            )

    in_dom = out_dom = None
    if label and any(lab is not None for lab in labels):
        mask = torch.tensor([lab == label for lab in labels])
        in_dom = float(gap[mask].mean()) if mask.any() else None
        out_dom = float(gap[~mask].mean()) if (~mask).any() else None
    result = BuildResult(
        name=name,
        rule=rule,
        tau=tau if rule == "paper" else None,
        selected=chosen,
        dataset=dataset,
        gap_stats=select.gap_stats(gap),
        tau_table=table,
        purity=select.purity(chosen, all_labels, label) if label else None,
        in_domain_gap=in_dom,
        out_of_domain_gap=out_dom,
        warnings=warnings,
        max_tokens=max_tokens,
        skipped_lines=skipped,
    )
    _record(
        registry,
        session,
        result,
        ref,
        loss_meta,
        loss_expert,
        full_gap,
        seed,
        size,
        label,
        label_field,
        versus_refs,
        pick,
    )
    return result


def _absolute(ref: ModelRef) -> ModelRef:
    if ref.path and ref.kind in ("local", "peft", "gguf"):
        return ref.model_copy(update={"path": str(Path(ref.path).expanduser().resolve())})
    return ref


def _record(
    registry,
    session,
    result: BuildResult,
    ref,
    loss_meta,
    loss_expert,
    gap,
    seed,
    size,
    label,
    label_field,
    versus,
    pick,
) -> None:
    rows = []
    for i in result.selected:
        row = {
            "query": result.dataset.rows[i]["query"],
            "response": result.dataset.rows[i]["response"],
            "loss_meta": round(float(loss_meta[i]), 4),
            "loss_expert": round(float(loss_expert[i]), 4),
            "gap": round(float(gap[i]), 4),
        }
        if result.dataset.rows[i].get(label_field) is not None:
            row["label"] = result.dataset.rows[i][label_field]
        rows.append(row)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if result.rule == "paper":
        baseline = (
            "min(" + ", ".join(["loss_meta"] + [f"loss[{v.display()}]" for v in versus]) + ")"
            if versus
            else "loss_meta"
        )
        rule_text = f"{baseline} - loss_expert > tau" + ("; largest gaps first" if pick == "top" else "")
    else:
        rule_text = f"{label_field} == '{label}'"
    info = {
        "file": "query_set.jsonl",
        "sha256": sha256_bytes(text.encode()),
        "size": len(rows),
        "tau": result.tau,
        "selection_rule": rule_text,
        "seed": seed,
        "source": {"name": result.dataset.name, "sha256": result.dataset.sha256, "n_pairs": len(result.dataset.rows)},
        "loss_gap": result.gap_stats,
        "label": label,
        "purity": result.purity,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "query_set.jsonl"
        path.write_text(text, encoding="utf-8")
        registry.add_query_set(
            name=result.name,
            meta_fingerprint=session.meta_row.fingerprint,
            file=path,
            info={k: v for k, v in info.items() if v is not None},
            expert_ref=ref.model_dump(mode="json", exclude_none=True),
        )
    result.info = info

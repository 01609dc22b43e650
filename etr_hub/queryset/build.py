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


def expert_cache_key(ref: ModelRef, meta_fingerprint: str) -> str:
    """Identity of an expert's weights for the loss cache."""
    parts = {"ref": ref.model_dump(mode="json", exclude_none=True), "meta": meta_fingerprint if ref.kind == "peft" and ref.base is None else None}
    if ref.kind in ("local", "peft", "gguf") and ref.path and Path(ref.path).exists():
        p = Path(ref.path)
        parts["files"] = tree_sha256(tree_listing(p)) if p.is_dir() else tree_sha256({p.name: sha256_bytes(p.read_bytes())})
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

            loaded = load_causal_lm(ModelRef.model_validate(self.meta_row.reference), progress=self.progress, role="meta")
            if meta_fingerprint(loaded.model) != self.meta_row.fingerprint:
                raise EtrHubError(f"the meta model at {self.meta_row.display} is not the one the registry recorded (fingerprint changed)", "re-run `etr-hub init --meta REF` with the original model, or retrain the experts")
            self._meta = loaded
        return self._meta

    def expert(self, ref: ModelRef):
        from etr_hub.models.loading import load_causal_lm

        needs_meta = ref.kind == "peft" and ref.base is None
        return load_causal_lm(ref, meta=self.meta if needs_meta else None, progress=self.progress)


def meta_pass(session: ModelSession, dataset: Dataset, progress: ProgressFactory, batch_size: int):
    """Meta losses on the dataset, from the cache or one pass that also caches routing states."""
    from etr_hub.models.fingerprint import output_embedding
    from etr_hub.queryset.scoring import encode_pairs, score_pairs

    fp = session.meta_row.fingerprint
    cache = LossCache(session.registry.settings.cache_dir)
    cached = cache.get(fp, dataset.sha256)
    if cached is not None:
        return cached
    meta = session.meta
    queries, responses = [r["query"] for r in dataset.rows], [r["response"] for r in dataset.rows]
    pairs = encode_pairs(meta.tokenizer, queries, responses)
    result = score_pairs(meta.model, meta.tokenizer, pairs, batch_size=batch_size, want_states=True,
                         advance=progress("meta model pass", len(pairs)))
    states = StateCache(session.registry.settings.cache_dir, fp)
    states.put([query_key(q) for q in queries], result.hidden, result.lse)
    states.put_mean_row(output_embedding(meta.model))
    cache.put(fp, dataset.sha256, result.loss)
    return result.loss


def expert_pass(session: ModelSession, ref: ModelRef, dataset: Dataset, progress: ProgressFactory, batch_size: int, warnings: list[str]):
    from etr_hub.models.chat import has_chat_template
    from etr_hub.queryset.scoring import encode_pairs, score_pairs

    key = expert_cache_key(ref, session.meta_row.fingerprint)
    cache = LossCache(session.registry.settings.cache_dir)
    cached = cache.get(key, dataset.sha256)
    if cached is not None:
        return cached
    expert = session.expert(ref)
    if not has_chat_template(expert.tokenizer):
        warnings.append(f"expert {ref.display()} has no chat template; scoring it on a plain 'User:/Assistant:' format")
    pairs = encode_pairs(expert.tokenizer, [r["query"] for r in dataset.rows], [r["response"] for r in dataset.rows])
    loss = score_pairs(expert.model, expert.tokenizer, pairs, batch_size=batch_size, advance=progress("expert pass", len(pairs))).loss
    cache.put(key, dataset.sha256, loss)
    return loss


def build_query_set(registry: Registry, name: str, expert: str | ModelRef, data: str | Path, *, tau: float = 0.0,
                    size: int = 100, seed: int = 0, label: str | None = None, label_field: str = "label",
                    rule: str = "paper", versus: tuple = (), pick: str = "random", batch_size: int = 8, progress: ProgressFactory = no_progress,
                    status: Callable[[str], None] | None = None, session: ModelSession | None = None) -> BuildResult:
    """Score `data` with the meta model and the expert, select the query set, record it.

    Pass a `session` to reuse already loaded models across builds (recipes, benchmarks)."""
    import torch

    if rule not in ("paper", "labelled"):
        raise EtrHubError(f"unknown selection rule '{rule}'", "use --rule paper or --rule labelled")
    if size < 1:
        raise EtrHubError(f"--size must be at least 1 (got {size})", "pass e.g. --size 100")
    if pick not in ("random", "top"):
        raise EtrHubError(f"unknown --pick '{pick}'", "use --pick random (the paper) or --pick top (largest gaps first)")
    if rule == "labelled" and not label:
        raise EtrHubError("--rule labelled needs --label", "pass the label of the expert's domain, e.g. --label astronomy")
    ref = expert if isinstance(expert, ModelRef) else ModelRef.parse(expert)
    ref = _absolute(ref)
    dataset = read_dataset(data)
    session = session or ModelSession(registry, status)
    warnings: list[str] = []
    labels = dataset.labels(label_field)
    loss_meta = meta_pass(session, dataset, progress, batch_size)
    loss_expert = expert_pass(session, ref, dataset, progress, batch_size, warnings)
    versus_refs = [_absolute(v if isinstance(v, ModelRef) else ModelRef.parse(v)) for v in versus]
    baseline = loss_meta
    for v in versus_refs:  # "better than the meta model AND than these models": expertise, not a shared style
        baseline = torch.minimum(baseline, expert_pass(session, v, dataset, progress, batch_size, warnings))
    gap = select.loss_gap(baseline, loss_expert)  # (N,)
    table = select.tau_table(gap)
    if tau not in {row["tau"] for row in table}:
        table.append({"tau": tau, "passing": int((gap > tau).sum())})
    if rule == "paper":
        chosen = select.select_by_tau(gap, tau, size, seed, top=pick == "top")
        if not chosen:
            raise DataError(
                f"τ={tau:g} selects no query (loss-gap quantiles {select.gap_stats(gap)['quantiles']}; passing at τ: "
                + ", ".join(f"{r['tau']:g}→{r['passing']}" for r in table) + ")",
                f"lower τ, e.g. --tau {select.suggest_tau(gap, size):g}",
            )
    else:
        chosen = select.select_by_label(labels, label, size, seed)
        if not chosen:
            raise DataError(f"no row of {dataset.path} has {label_field} == '{label}'", f"check --label and --label-field (the dataset's '{label_field}' values are the labels)")

    in_dom = out_dom = None
    if label and any(lab is not None for lab in labels):
        mask = torch.tensor([lab == label for lab in labels])
        in_dom = float(gap[mask].mean()) if mask.any() else None
        out_dom = float(gap[~mask].mean()) if (~mask).any() else None
    result = BuildResult(name=name, rule=rule, tau=tau if rule == "paper" else None, selected=chosen, dataset=dataset,
                         gap_stats=select.gap_stats(gap), tau_table=table, purity=select.purity(chosen, labels, label) if label else None,
                         in_domain_gap=in_dom, out_of_domain_gap=out_dom, warnings=warnings)
    _record(registry, session, result, ref, loss_meta, loss_expert, gap, seed, size, label, label_field, versus_refs, pick)
    return result


def _absolute(ref: ModelRef) -> ModelRef:
    if ref.path and ref.kind in ("local", "peft", "gguf"):
        return ref.model_copy(update={"path": str(Path(ref.path).expanduser().resolve())})
    return ref


def _record(registry, session, result: BuildResult, ref, loss_meta, loss_expert, gap, seed, size, label, label_field, versus, pick) -> None:
    rows = []
    for i in result.selected:
        row = {"query": result.dataset.rows[i]["query"], "response": result.dataset.rows[i]["response"],
               "loss_meta": round(float(loss_meta[i]), 4), "loss_expert": round(float(loss_expert[i]), 4), "gap": round(float(gap[i]), 4)}
        if result.dataset.rows[i].get(label_field) is not None:
            row["label"] = result.dataset.rows[i][label_field]
        rows.append(row)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if result.rule == "paper":
        baseline = "min(" + ", ".join(["loss_meta"] + [f"loss[{v.display()}]" for v in versus]) + ")" if versus else "loss_meta"
        rule_text = f"{baseline} - loss_expert > tau" + ("; largest gaps first" if pick == "top" else "")
    else:
        rule_text = f"{label_field} == '{label}'"
    info = {
        "file": "query_set.jsonl", "sha256": sha256_bytes(text.encode()), "size": len(rows), "tau": result.tau,
        "selection_rule": rule_text, "seed": seed,
        "source": {"name": result.dataset.name, "sha256": result.dataset.sha256, "n_pairs": len(result.dataset.rows)},
        "loss_gap": result.gap_stats, "label": label, "purity": result.purity,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "query_set.jsonl"
        path.write_text(text, encoding="utf-8")
        registry.add_query_set(name=result.name, meta_fingerprint=session.meta_row.fingerprint, file=path,
                               info={k: v for k, v in info.items() if v is not None}, expert_ref=ref.model_dump(mode="json", exclude_none=True))
    result.info = info

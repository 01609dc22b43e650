"""`etr-hub eval mmlu`: MMLU-Expert, measured the way the paper measures it, with baselines.

Per question: routing (which expert token wins among the experts; whether an expert token
beats every word token at the routing position, i.e. greedy decoding would emit it) and the
answer (letter scoring over A–D by the model that answers). Everything a frozen model computes
is cached per (question, model): routing states in the StateCache, letter scores and embeddings
in the eval VectorCache, so baselines and re-runs pay nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from etr_hub.cache import StateCache, query_key
from etr_hub.errors import DataError, EtrHubError
from etr_hub.eval.mmlu import Question, read_mmlu_dir, render_query
from etr_hub.eval.scoring import SCORE_FORMAT, VectorCache, score_letters
from etr_hub.jsonl import iter_jsonl, query_column
from etr_hub.models.refs import ModelRef
from etr_hub.queryset.build import ModelSession, ProgressFactory, no_progress
from etr_hub.registry import Registry

GENERAL_PROMPTS = Path(__file__).resolve().parents[1] / "data" / "general_prompts.jsonl"


@dataclass
class EvalOptions:
    data_dir: Path
    subjects: list[str] | None = None
    mapping: dict[str, str] = field(default_factory=dict)  # subject -> expert name (--map)
    general_prompts: Path | None = GENERAL_PROMPTS
    batch_size: int = 8
    baselines: bool = True
    dynamic_later: int = 2  # experts added later in the plug-and-play check
    seed: int = 0


@dataclass
class ExpertEntry:
    name: str
    label: str | None
    description: str
    ref: ModelRef  # loadable (store paths resolved)
    row: torch.Tensor  # (1, C) token
    score_key: str  # identity of its weights for the letter-score cache
    query_set: list[str] | None


def _h(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def load_experts(registry: Registry, fingerprint: str) -> list[ExpertEntry]:
    from etr_hub.bundle import Manifest
    from etr_hub.bundle.io import read_token

    entries = []
    for e in sorted(registry.list_experts(enabled_only=True), key=lambda r: r.name):
        if e.meta_fingerprint != fingerprint:
            continue
        m = Manifest.model_validate(e.manifest)
        token = registry.abspath(e.token_path)
        ref = ModelRef.model_validate(e.expert_ref)
        if ref.kind == "peft" and e.adapter_path:
            ref = ref.model_copy(update={"path": str(registry.abspath(e.adapter_path))})
        identity = e.adapter_sha256 or json.dumps(e.expert_ref, sort_keys=True)
        qs = registry.query_set_for(e)
        queries = None
        if qs is not None:
            queries = query_column(registry.abspath(qs.store_path))
        entries.append(
            ExpertEntry(
                e.name,
                e.label,
                e.description or "",
                ref,
                read_token(token.parent, token, m).float(),
                _h(SCORE_FORMAT, fingerprint, identity),
                queries,
            )
        )
    return entries


def experts_for(names: Iterable[str], experts: list[ExpertEntry], mapping: dict[str, str]) -> dict[str, str | None]:
    """Each subject or task -> the expert that should answer it: `--map` first, else the expert
    whose manifest label is that name; None where neither names one."""
    registered = [e.name for e in experts]
    for what, name in mapping.items():
        if name not in registered:
            raise EtrHubError(
                f"--map {what}={name}: no enabled expert named '{name}' for this meta model",
                f"registered: {', '.join(registered) or 'none'} (see `etr-hub expert list`)",
            )
    by_label = {e.label: e.name for e in experts if e.label}
    return {n: mapping.get(n) or by_label.get(n) for n in names}


def read_general_prompts(path: Path | None, split: str = "eval") -> list[str]:
    if path is None or not Path(path).is_file():
        return []
    prompts = []
    for lineno, r in iter_jsonl(path):
        if not isinstance(r, dict):
            raise DataError(
                f"{path}:{lineno} is not a JSON object", 'write one {"query": …, "split": …} object per line'
            )
        if r.get("split", split) == split and isinstance(r.get("query"), str) and r["query"].strip():
            prompts.append(r["query"])
    return prompts


class Evaluator:
    def __init__(
        self,
        registry: Registry,
        opts: EvalOptions,
        progress: ProgressFactory = no_progress,
        status: Callable[[str], None] | None = None,
    ):
        self.registry, self.opts, self.progress, self.status = registry, opts, progress, status
        self.cache = VectorCache(registry.settings.cache_dir)
        self.warnings: list[str] = []

    def _open(self) -> None:
        """The registry's meta model (loaded only when something is not cached)."""
        self.session = ModelSession(self.registry, self.status)
        self.fp = self.session.meta_row.fingerprint
        self.states = StateCache(self.registry.settings.cache_dir, self.fp)

    # -- what the frozen models compute (cached) ------------------------------------------
    def routing(
        self, queries: list[str], what: str = "routing states"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hidden (N, C), lse_V (N,), max word logit (N,)) at each query's routing position."""
        from etr_hub.models.fingerprint import output_embedding
        from etr_hub.queryset.scoring import routing_states

        keys = [query_key(q) for q in queries]
        hidden, lse, missing = self.states.get(keys)
        if missing:
            meta = self.session.meta
            h_new, lse_new = routing_states(
                meta.model,
                meta.tokenizer,
                [queries[i] for i in missing],
                batch_size=self.opts.batch_size,
                advance=self.progress(f"meta model: {what}", len(missing)),
            )
            self.states.put([keys[i] for i in missing], h_new, lse_new)
            if hidden is None:
                hidden, lse = h_new, lse_new
            else:
                hidden[missing], lse[missing] = h_new, lse_new

        def max_word(idx: list[int]) -> torch.Tensor:
            w_v = output_embedding(self.session.meta.model).float()  # (V, C)
            return (hidden[idx] @ w_v.T).max(dim=-1).values.unsqueeze(-1)  # (M, C) @ (C, V) -> (M, 1)

        top = self.cache.fetch(_h("max-word-logit", self.fp), keys, max_word)[:, 0]  # (N,)
        return hidden, lse, top

    def letter_scores(
        self, model_key: str, queries: list[str], keys: list[str], load: Callable[[], object], what: str
    ) -> torch.Tensor:
        def compute(idx: list[int]) -> torch.Tensor:
            loaded = load()
            return score_letters(
                loaded.model,
                loaded.tokenizer,
                [queries[i] for i in idx],
                batch_size=self.opts.batch_size,
                advance=self.progress(f"letter scores: {what}", len(idx)),
            )

        return self.cache.fetch(model_key, keys, compute)  # (N, 4)

    def expert_scores(self, e: ExpertEntry, queries: list[str], keys: list[str]) -> torch.Tensor:
        if e.ref.kind == "openai":
            self.warnings.append(
                f"expert {e.name} is remote (no log-probabilities here): its answers are scored as the meta model's"
            )
            return self.letter_scores(
                _h(SCORE_FORMAT, "meta", self.fp), queries, keys, lambda: self.session.meta, "meta model"
            )
        return self.letter_scores(e.score_key, queries, keys, lambda: self.session.expert(e.ref), e.name)

    # -- the eval ---------------------------------------------------------------------------
    def run(self) -> dict:
        read = read_mmlu_dir(self.opts.data_dir, self.opts.subjects)  # bad data fails before any model loads
        self._open()
        if read.skipped:
            self.warnings.append(
                f"skipped {len(read.skipped)} malformed row(s): "
                + "; ".join(read.skipped[:3])
                + (" …" if len(read.skipped) > 3 else "")
            )
        if self.opts.subjects:
            absent = sorted(set(self.opts.subjects) - set(read.questions))
            if absent:
                self.warnings.append(f"no CSV for subject(s) {', '.join(absent)} in {self.opts.data_dir}")
        experts = load_experts(self.registry, self.fp)
        gold_of = experts_for(read.questions, experts, self.opts.mapping)
        unmapped = {s: len(qs) for s, qs in read.questions.items() if gold_of[s] is None}
        if not experts:
            self.warnings.append(
                "no experts are registered for this meta model: only the meta model is evaluated (register experts with `etr-hub expert add plugins/NAME`)"
            )
        elif unmapped:
            self.warnings.append(
                f"{len(unmapped)} subject(s) have no expert (no manifest label or --map), not evaluated: "
                + ", ".join(sorted(unmapped)[:8])
                + (" …" if len(unmapped) > 8 else "")
            )
        if experts and len(unmapped) == len(read.questions):
            raise EtrHubError(
                f"no subject in {self.opts.data_dir} maps to a registered expert (labels: {', '.join(sorted(e.label for e in experts if e.label)) or 'none'})",
                "pass --map SUBJECT=EXPERT, or evaluate a folder with those subjects",
            )
        questions = [
            q for s in sorted(read.questions) for q in read.questions[s] if not experts or gold_of[s] is not None
        ]
        report = self._evaluate(questions, experts, gold_of)
        report.update(
            {
                "data_dir": str(self.opts.data_dir),
                "files": read.files,
                "skipped_rows": read.skipped,
                "unmapped_subjects": unmapped if experts else {},
                "meta": self.session.meta_row.display,
            }
        )
        report["warnings"] = self.warnings
        return report

    def _evaluate(self, questions: list[Question], experts: list[ExpertEntry], gold_of: dict) -> dict:
        queries = [render_query(q) for q in questions]
        keys = [q.key for q in questions]
        answers = torch.tensor([q.answer_index for q in questions])  # (N,)
        meta_scores = self.letter_scores(
            _h(SCORE_FORMAT, "meta", self.fp), queries, keys, lambda: self.session.meta, "meta model"
        )
        meta_ok = meta_scores.argmax(-1) == answers  # (N,)
        report: dict = {"n": len(questions), "experts": [e.name for e in experts]}
        if not experts:
            report.update(
                {
                    "routing_accuracy": None,
                    "accuracy": _mean(meta_ok),
                    "fire_rate": None,
                    "false_fire_rate": None,
                    "per_subject": _per_subject_meta(questions, meta_ok),
                    "baselines": {"meta": {"accuracy": _mean(meta_ok)}},
                    "dynamic": None,
                }
            )
            return report
        names = [e.name for e in experts]
        gold = torch.tensor([names.index(gold_of[q.subject]) for q in questions])  # (N,)
        hidden, lse, max_word = self.routing(queries)
        w_e = torch.cat([e.row for e in experts], dim=0)  # (E, C)
        expert_logits = hidden @ w_e.T  # (N, C) @ (C, E) -> (N, E)
        winner = expert_logits.argmax(-1)  # (N,)
        fired = expert_logits.max(-1).values > max_word  # (N,)
        ok = torch.stack([self.expert_scores(e, queries, keys).argmax(-1) == answers for e in experts])  # (E, N)
        idx = torch.arange(len(questions))

        def answered(route: torch.Tensor, fire: torch.Tensor | None = None) -> torch.Tensor:
            by_expert = ok[route, idx]  # (N,)
            return by_expert if fire is None else torch.where(fire, by_expert, meta_ok)

        etr_ok = answered(winner, fired)
        oracle_ok = answered(gold)
        report.update(
            {
                "routing_accuracy": _mean(winner == gold),
                "accuracy": _mean(etr_ok),
                "fire_rate": _mean(fired),
                "per_subject": {},
                "confusion": {},
                "expert_accuracy": {},
            }
        )
        for s in sorted({q.subject for q in questions}):
            m = torch.tensor([q.subject == s for q in questions])
            report["per_subject"][s] = {
                "n": int(m.sum()),
                "expert": gold_of[s],
                "routing_accuracy": _mean((winner == gold)[m]),
                "fire_rate": _mean(fired[m]),
                "accuracy": _mean(etr_ok[m]),
                "meta_accuracy": _mean(meta_ok[m]),
                "oracle_accuracy": _mean(oracle_ok[m]),
            }
            report["confusion"][s] = {n: int((winner[m] == k).sum()) for k, n in enumerate(names)}
            report["expert_accuracy"][s] = {n: _mean(ok[k][m]) for k, n in enumerate(names)}
        meta_acc, oracle_acc = _mean(meta_ok), _mean(oracle_ok)
        report["gap_closed"], report["gap_closed_reason"] = gap_closed(meta_acc, oracle_acc, report["accuracy"])
        random_expert = {
            "routing_accuracy": 1 / len(experts),
            "accuracy": float(ok.float().mean()),
        }  # the exact expectation
        report["baselines"] = self._baselines(
            meta_acc,
            oracle_acc,
            random_expert,
            report["routing_accuracy"],
            winner,
            queries,
            keys,
            experts,
            gold,
            answered,
        )
        report["false_fire_rate"], report["general_prompts"] = self._false_fire(w_e, names)
        report["dynamic"] = self._dynamic(experts, hidden, lse, max_word, gold, answered)
        in_sets = {x for e in experts for x in (e.query_set or [])}
        contaminated = sum(q in in_sets for q in queries)
        if contaminated:
            self.warnings.append(
                f"{contaminated} evaluated question(s) are in an expert's query set: evaluate on questions not used for training"
            )
        report["in_query_sets"] = contaminated
        return report

    # -- baselines ----------------------------------------------------------------------------
    def _baselines(
        self,
        meta_acc,
        oracle_acc,
        random_expert: dict,
        routing_accuracy,
        winner,
        queries,
        keys,
        experts,
        gold,
        answered,
    ) -> dict:
        """Every method's routing and answer accuracy next to ETR's; `answered(route)` scores a routing."""
        baselines = {
            "meta": {"routing_accuracy": None, "accuracy": meta_acc},
            "oracle": {"routing_accuracy": 1.0, "accuracy": oracle_acc},
            "random": random_expert,
            "etr_always_expert": {"routing_accuracy": routing_accuracy, "accuracy": _mean(answered(winner))},
        }
        if self.opts.baselines:
            baselines["prompt_router"] = self._prompt_router(queries, keys, experts, gold, answered)
            baselines["embedding_router"] = self._embedding_router(queries, keys, experts, gold, answered)
        return baselines

    def _prompt_router(self, queries, keys, experts, gold, answered) -> dict:
        from etr_hub.eval.routers import prompt_router_scores

        if len(experts) > 26:
            return {"routing_accuracy": None, "accuracy": None, "note": "more than 26 experts"}
        listed = [(e.name, e.description) for e in experts]
        key = _h("prompt-router-v1", self.fp, json.dumps(listed))

        def compute(idx):
            meta = self.session.meta
            return prompt_router_scores(
                meta.model,
                meta.tokenizer,
                [queries[i] for i in idx],
                listed,
                batch_size=self.opts.batch_size,
                advance=self.progress("prompt router (meta model)", len(idx)),
            )

        route = self.cache.fetch(key, keys, compute).argmax(-1)  # (N,)
        return {"routing_accuracy": _mean(route == gold), "accuracy": _mean(answered(route))}

    def _embedding_router(self, queries, keys, experts, gold, answered) -> dict:
        from etr_hub.eval.routers import MetaEmbedder, MiniLMEmbedder, minilm_dir, nearest_centroid

        if any(not e.query_set for e in experts):
            return {"routing_accuracy": None, "accuracy": None, "note": "an expert has no query set"}
        path = minilm_dir()
        embed = None

        def embedder():
            nonlocal embed
            if embed is None:
                embed = (
                    MiniLMEmbedder(path) if path else MetaEmbedder(self.session.meta.model, self.session.meta.tokenizer)
                )
            return embed

        name = MiniLMEmbedder.name if path else MetaEmbedder.name
        cache_key = _h("embed", "minilm-l6-v2" if path else f"meta-meanpool-{self.fp}")

        def vectors(texts: list[str], what: str) -> torch.Tensor:
            tk = [_h("text", t) for t in texts]
            return self.cache.fetch(
                cache_key,
                tk,
                lambda idx: embedder()([texts[i] for i in idx], self.progress(f"embeddings: {what}", len(idx))),
            )

        sets = [vectors(e.query_set, f"{e.name} query set") for e in experts]
        route = nearest_centroid(vectors(queries, "questions"), sets).argmax(-1)  # (N,)
        return {"routing_accuracy": _mean(route == gold), "accuracy": _mean(answered(route)), "embedder": name}

    def _false_fire(self, w_e: torch.Tensor, names: list[str]) -> tuple[float | None, dict]:
        prompts = read_general_prompts(self.opts.general_prompts, "eval")
        if not prompts:
            self.warnings.append(
                f"no general prompts (split 'eval') at {self.opts.general_prompts}: false-fire rate not measured"
            )
            return None, {}
        hidden, _, max_word = self.routing(prompts, "general prompts")
        logits = hidden @ w_e.T  # (P, E)
        fired = logits.max(-1).values > max_word  # (P,)
        by = {n: int(((logits.argmax(-1) == k) & fired).sum()) for k, n in enumerate(names)}
        examples = [prompts[i] for i in torch.nonzero(fired).flatten().tolist()[:5]]
        return _mean(fired), {"n": len(prompts), "fired": int(fired.sum()), "by_expert": by, "examples": examples}

    def _dynamic(self, experts, hidden, lse, max_word, gold, answered) -> dict | None:
        from etr_hub.eval.dynamic import add_later, train_rows_jointly
        from etr_hub.training.optimize import TrainSettings

        later_n = self.opts.dynamic_later
        if len(experts) < later_n + 1 or any(not e.query_set for e in experts):
            self.warnings.append("plug-and-play check skipped: it needs at least 3 experts, each with a query set")
            return None
        qs_queries, owner = [], []
        for k, e in enumerate(experts):
            qs_queries += e.query_set
            owner += [k] * len(e.query_set)
        general = read_general_prompts(self.opts.general_prompts, "train")
        qs_queries += general
        owner += [-1] * len(general)  # word negatives, as train-token uses them
        h_qs, lse_qs, _ = self.routing(qs_queries, "query sets")
        owner_t = torch.tensor(owner)
        init = self.states.get_mean_row()
        if init is None:
            from etr_hub.models.fingerprint import output_embedding

            self.states.put_mean_row(output_embedding(self.session.meta.model))
            init = self.states.get_mean_row()
        cfg = TrainSettings(seed=self.opts.seed)
        target = torch.where(owner_t >= 0, owner_t + 1, torch.zeros_like(owner_t))
        later = list(range(len(experts) - later_n, len(experts)))
        first = [k for k in range(len(experts)) if k not in later]
        keep = torch.tensor([int(o) in first or int(o) == -1 for o in owner])
        remap = {k: j for j, k in enumerate(first)}
        first_target = torch.tensor([remap[int(o)] + 1 if int(o) >= 0 else 0 for o in owner_t[keep]])
        threads = torch.get_num_threads()
        torch.set_num_threads(
            1
        )  # thousands of tiny steps: extra threads only add synchronisation (100x slower on a busy CPU)
        try:
            static = train_rows_jointly(h_qs, lse_qs, target, init, len(experts), cfg)  # (E, C)
            w_first = train_rows_jointly(h_qs[keep], lse_qs[keep], first_target, init, len(first), cfg)
            dynamic = add_later(h_qs, lse_qs, owner_t, w_first, later, init, cfg)
        finally:
            torch.set_num_threads(threads)

        def measure(w: torch.Tensor) -> dict:
            logits = hidden @ w.T  # (N, E)
            route = logits.argmax(-1)
            fire = logits.max(-1).values > max_word
            return {
                "routing_accuracy": _mean(route == gold),
                "accuracy": _mean(answered(route, fire)),
                "fire_rate": _mean(fire),
            }

        s, d = measure(static), measure(dynamic)
        return {
            "static": s,
            "dynamic": d,
            "added_later": [experts[k].name for k in later],
            "routing_drop_points": round(100 * (s["routing_accuracy"] - d["routing_accuracy"]), 2),
            "accuracy_drop_points": round(100 * (s["accuracy"] - d["accuracy"]), 2),
        }


def gap_closed(meta: float | None, oracle: float | None, etr: float | None) -> tuple[float | None, str | None]:
    """(ETR − meta) / (oracle − meta), the paper's share of the meta → oracle gap that routing closes;
    None with the reason when there is no gap to close (the oracle expert is no better than the meta model)."""
    if meta is None or oracle is None or etr is None:
        return None, "not measured"
    if oracle <= meta:
        return (
            None,
            f"the oracle expert ({100 * oracle:.1f}%) is no better than the meta model alone ({100 * meta:.1f}%): no gap to close",
        )
    return (etr - meta) / (oracle - meta), None


def _mean(x: torch.Tensor) -> float | None:
    return float(x.float().mean()) if x.numel() else None


def _per_subject_meta(questions: list[Question], meta_ok: torch.Tensor) -> dict:
    out = {}
    for s in sorted({q.subject for q in questions}):
        m = torch.tensor([q.subject == s for q in questions])
        out[s] = {"n": int(m.sum()), "expert": None, "accuracy": _mean(meta_ok[m]), "meta_accuracy": _mean(meta_ok[m])}
    return out


def evaluate_mmlu(
    registry: Registry,
    opts: EvalOptions,
    *,
    progress: ProgressFactory = no_progress,
    status: Callable[[str], None] | None = None,
) -> dict:
    torch.manual_seed(opts.seed)
    random.seed(opts.seed)
    return Evaluator(registry, opts, progress, status).run()

"""`etr-hub eval mmlu`: MMLU-Expert, measured the way the paper measures it, with baselines.

Per question: routing (which expert token wins among the experts; whether an expert token
beats every word token at the routing position, i.e. greedy decoding would emit it) and the
answer (letter scoring over A–D by the model that answers). Everything a frozen model computes
is cached per (question, model): routing states in the StateCache, letter scores and embeddings
in the eval VectorCache, so baselines and re-runs pay nothing twice.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from etr_hub.cache import digest
from etr_hub.eval.experts import NO_EXPERTS, ExpertEntry, experts_for, load_experts, no_group_maps
from etr_hub.eval.mmlu import Question, ReadResult, read_mmlu_dir, render_query
from etr_hub.eval.report import Answered, Routed, gap_closed, mean, per_group, per_group_meta, route
from etr_hub.eval.scoring import SCORE_FORMAT, VectorCache, score_letters
from etr_hub.registry import Registry
from etr_hub.session import (
    GENERAL_PROMPTS,
    ModelSession,
    ProgressFactory,
    Status,
    no_progress,
    read_general_prompts,
)


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
    device: str | None = None  # where the models run (models/device.py; None: ETR_HUB_DEVICE, else auto)
    dtype: str | None = None


class Evaluator:
    def __init__(
        self,
        registry: Registry,
        opts: EvalOptions,
        progress: ProgressFactory = no_progress,
        status: Status = None,
    ):
        self.registry, self.opts, self.progress, self.status = registry, opts, progress, status
        self.cache = VectorCache(registry.settings.cache_dir)
        self.warnings: list[str] = []

    @classmethod
    def evaluate(
        cls, registry: Registry, opts: Any, *, progress: ProgressFactory = no_progress, status: Status = None
    ) -> dict:
        """Seed everything from `opts.seed`, then run the evaluation."""
        torch.manual_seed(opts.seed)
        random.seed(opts.seed)
        return cls(registry, opts, progress, status).run()

    def _open(self) -> None:
        """The registry's meta model (loaded only when something is not cached)."""
        self.session = ModelSession(self.registry, self.status, device=self.opts.device, dtype=self.opts.dtype)
        self.fp = self.session.meta_row.fingerprint
        self.cache_fp = self.session.cache_id  # what the models compute is cached per meta model and dtype

    # -- what the frozen models compute (cached) ------------------------------------------
    def routing(
        self, queries: list[str], what: str = "routing states"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hidden (N, C), lse_V (N,), max word logit (N,)) at each query's routing position."""
        return self.session.routing_states(
            queries, self.progress, batch_size=self.opts.batch_size, description=f"meta model: {what}"
        )

    def route(self, queries: list[str], keys: list[str], experts: list[ExpertEntry], gold: torch.Tensor) -> Routed:
        hidden, lse, max_word = self.routing(queries)
        w_e = torch.cat([e.row for e in experts], dim=0)  # (E, C)
        return Routed(queries, keys, experts, gold, hidden, lse, max_word, w_e)

    def letter_scores(
        self, model_key: str, queries: list[str], keys: list[str], load: Callable[[], object], what: str
    ) -> torch.Tensor:
        def compute(idx: list[int]) -> torch.Tensor:
            loaded = load()
            return score_letters(
                loaded.model,  # type: ignore[attr-defined]
                loaded.tokenizer,  # type: ignore[attr-defined]
                [queries[i] for i in idx],
                batch_size=self.opts.batch_size,
                advance=self.progress(f"letter scores: {what}", len(idx)),
            )

        return self.cache.fetch(model_key, keys, compute)  # (N, 4)

    def meta_scores(self, queries: list[str], keys: list[str]) -> torch.Tensor:
        key = digest(SCORE_FORMAT, "meta", self.cache_fp)
        return self.letter_scores(key, queries, keys, lambda: self.session.meta, "meta model")

    def expert_scores(self, e: ExpertEntry, queries: list[str], keys: list[str]) -> torch.Tensor:
        if e.ref.kind == "openai":
            self.warnings.append(
                f"expert {e.name} is remote (no log-probabilities here): its answers are scored as the meta model's"
            )
            return self.meta_scores(queries, keys)
        return self.letter_scores(e.score_key, queries, keys, lambda: self.session.expert(e.ref), e.name)

    # -- the eval ---------------------------------------------------------------------------
    def run(self) -> dict:
        read = read_mmlu_dir(self.opts.data_dir, self.opts.subjects)  # bad data fails before any model loads
        self._open()
        self._warn_about_files(read)
        experts = load_experts(self.registry, self.fp, self.cache_fp)
        gold_of = experts_for(read.questions, experts, self.opts.mapping)
        unmapped = {s: len(qs) for s, qs in read.questions.items() if gold_of[s] is None}
        if not experts:
            self.warnings.append(NO_EXPERTS)
        elif unmapped:
            self.warnings.append(
                f"{len(unmapped)} subject(s) have no expert (no manifest label or `mapping`), not evaluated: "
                + ", ".join(sorted(unmapped)[:8])
                + (" …" if len(unmapped) > 8 else "")
            )
        if experts and len(unmapped) == len(read.questions):
            raise no_group_maps(self.opts.data_dir, experts, "subject", ", or evaluate a folder with those subjects")
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

    def _warn_about_files(self, read: ReadResult) -> None:
        if read.skipped:
            self.warnings.append(
                f"skipped {len(read.skipped)} malformed row(s): "
                + "; ".join(read.skipped[:3])
                + (" …" if len(read.skipped) > 3 else "")
            )
        absent = sorted(set(self.opts.subjects or ()) - set(read.questions))
        if absent:
            self.warnings.append(f"no CSV for subject(s) {', '.join(absent)} in {self.opts.data_dir}")

    def _evaluate(self, questions: list[Question], experts: list[ExpertEntry], gold_of: dict) -> dict:
        queries = [render_query(q) for q in questions]
        keys = [q.key for q in questions]
        answers = torch.tensor([q.answer_index for q in questions])  # (N,)
        meta_ok = self.meta_scores(queries, keys).argmax(-1) == answers  # (N,)
        report: dict = {"n": len(questions), "experts": [e.name for e in experts]}
        if not experts:
            return report | _meta_alone([q.subject for q in questions], meta_ok)
        names = [e.name for e in experts]
        routed = self.route(queries, keys, experts, torch.tensor([names.index(gold_of[q.subject]) for q in questions]))
        ok = torch.stack([self.expert_scores(e, queries, keys).argmax(-1) == answers for e in experts])  # (E, N)
        idx = torch.arange(len(questions))

        def answered(route: torch.Tensor, fire: torch.Tensor | None = None) -> torch.Tensor:
            by_expert = ok[route, idx]  # (N,)
            return by_expert if fire is None else torch.where(fire, by_expert, meta_ok)

        report |= self._scores([q.subject for q in questions], gold_of, routed, ok, meta_ok, answered)
        report["false_fire_rate"], report["general_prompts"] = self._false_fire(routed.w_e, names)
        report["dynamic"] = self._dynamic(routed, answered)
        report["in_query_sets"] = self._in_query_sets(queries, experts)
        return report

    def _scores(
        self, subjects: list[str], gold_of: dict, routed: Routed, ok: torch.Tensor, meta_ok: torch.Tensor, answered
    ) -> dict:
        """ETR's routing and answers, per subject and against the baselines; `ok` (E, N): each expert's answers."""
        etr_ok, oracle_ok = answered(routed.winner, routed.fired), answered(routed.gold)
        accuracies = {"accuracy": etr_ok, "meta_accuracy": meta_ok, "oracle_accuracy": oracle_ok}
        per_subject, confusion = per_group(subjects, gold_of, routed, accuracies)
        meta_acc, oracle_acc, etr_acc = mean(meta_ok), mean(oracle_ok), mean(etr_ok)
        closed, reason = gap_closed(meta_acc, oracle_acc, etr_acc)
        random_expert = {"routing_accuracy": 1 / len(routed.experts), "accuracy": float(ok.float().mean())}  # exact
        return {
            "routing_accuracy": routed.routing_accuracy,
            "accuracy": etr_acc,
            "fire_rate": mean(routed.fired),
            "per_subject": per_subject,
            "confusion": confusion,
            "expert_accuracy": _expert_accuracy(subjects, ok, routed.names),
            "gap_closed": closed,
            "gap_closed_reason": reason,
            "baselines": self._baselines(routed, answered, meta_acc, oracle_acc, random_expert),
        }

    def _in_query_sets(self, queries: list[str], experts: list[ExpertEntry]) -> int:
        in_sets = {x for e in experts for x in (e.query_set or [])}
        contaminated = sum(q in in_sets for q in queries)
        if contaminated:
            self.warnings.append(
                f"{contaminated} evaluated question(s) are in an expert's query set: "
                "evaluate on questions not used for training"
            )
        return contaminated

    # -- baselines ----------------------------------------------------------------------------
    def _baselines(
        self, routed: Routed, answered: Answered, meta_acc: float | None, oracle_acc: float | None, random_expert: dict
    ) -> dict:
        """Every method's routing and answer accuracy next to ETR's; `answered(route)` scores a routing."""
        baselines = {
            "meta": {"routing_accuracy": None, "accuracy": meta_acc},
            "oracle": {"routing_accuracy": 1.0, "accuracy": oracle_acc},
            "random": random_expert,
            "etr_always_expert": {
                "routing_accuracy": routed.routing_accuracy,
                "accuracy": mean(answered(routed.winner)),
            },
        }
        if self.opts.baselines:
            baselines["prompt_router"] = self._prompt_router(routed, answered)
            baselines["embedding_router"] = self._embedding_router(routed, answered)
        return baselines

    def _prompt_router(self, routed: Routed, answered: Answered) -> dict:
        from etr_hub.eval.routers import prompt_router_scores

        if len(routed.experts) > 26:
            return {"routing_accuracy": None, "accuracy": None, "note": "more than 26 experts"}
        listed = [(e.name, e.description) for e in routed.experts]
        key = digest("prompt-router-v1", self.cache_fp, json.dumps(listed))

        def compute(idx):
            meta = self.session.meta
            return prompt_router_scores(
                meta.model,
                meta.tokenizer,
                [routed.queries[i] for i in idx],
                listed,
                batch_size=self.opts.batch_size,
                advance=self.progress("prompt router (meta model)", len(idx)),
            )

        choice = self.cache.fetch(key, routed.keys, compute).argmax(-1)  # (N,)
        return {"routing_accuracy": mean(choice == routed.gold), "accuracy": mean(answered(choice))}

    def _embedding_router(self, routed: Routed, answered: Answered) -> dict:
        from etr_hub.eval.routers import MetaEmbedder, MiniLMEmbedder, minilm_dir, nearest_centroid

        if any(not e.query_set for e in routed.experts):
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
        cache_key = digest("embed", "minilm-l6-v2" if path else f"meta-meanpool-{self.cache_fp}")

        def vectors(texts: list[str], what: str) -> torch.Tensor:
            tk = [digest("text", t) for t in texts]
            return self.cache.fetch(
                cache_key,
                tk,
                lambda idx: embedder()([texts[i] for i in idx], self.progress(f"embeddings: {what}", len(idx))),
            )

        sets = [vectors(e.query_set or [], f"{e.name} query set") for e in routed.experts]
        choice = nearest_centroid(vectors(routed.queries, "questions"), sets).argmax(-1)  # (N,)
        return {"routing_accuracy": mean(choice == routed.gold), "accuracy": mean(answered(choice)), "embedder": name}

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
        return mean(fired), {"n": len(prompts), "fired": int(fired.sum()), "by_expert": by, "examples": examples}

    def _dynamic(self, routed: Routed, answered: Answered) -> dict | None:
        """The plug-and-play check: rows retrained all together vs the last experts added one at a time."""
        from etr_hub.eval.dynamic import static_and_dynamic
        from etr_hub.training.optimize import TrainSettings

        experts, later_n = routed.experts, self.opts.dynamic_later
        if len(experts) < later_n + 1 or any(not e.query_set for e in experts):
            self.warnings.append("plug-and-play check skipped: it needs at least 3 experts, each with a query set")
            return None
        queries, owner = [], []
        for k, e in enumerate(experts):
            queries += e.query_set or []
            owner += [k] * len(e.query_set or [])
        general = read_general_prompts(self.opts.general_prompts, "train")
        queries += general
        owner += [-1] * len(general)  # word negatives, as train-token uses them
        hidden, lse, _ = self.routing(queries, "query sets")
        later = list(range(len(experts) - later_n, len(experts)))
        cfg = TrainSettings(seed=self.opts.seed)
        static, dynamic = static_and_dynamic(
            hidden, lse, torch.tensor(owner), self.session.mean_row(), len(experts), later, cfg
        )
        s, d = _measure(routed, static, answered), _measure(routed, dynamic, answered)
        return {
            "static": s,
            "dynamic": d,
            "added_later": [experts[k].name for k in later],
            "routing_drop_points": round(100 * (s["routing_accuracy"] - d["routing_accuracy"]), 2),
            "accuracy_drop_points": round(100 * (s["accuracy"] - d["accuracy"]), 2),
        }


def _measure(routed: Routed, w_e: torch.Tensor, answered: Answered) -> dict:
    """Routing and answer accuracy of the questions under other expert rows `w_e` (E, C)."""
    winner, fired = route(routed.hidden, routed.max_word, w_e)
    return {
        "routing_accuracy": mean(winner == routed.gold),
        "accuracy": mean(answered(winner, fired)),
        "fire_rate": mean(fired),
    }


def _meta_alone(subjects: list[str], meta_ok: torch.Tensor) -> dict:
    return {
        "routing_accuracy": None,
        "accuracy": mean(meta_ok),
        "fire_rate": None,
        "false_fire_rate": None,
        "per_subject": per_group_meta(subjects, meta_ok),
        "baselines": {"meta": {"accuracy": mean(meta_ok)}},
        "dynamic": None,
    }


def _expert_accuracy(subjects: list[str], ok: torch.Tensor, names: list[str]) -> dict:
    """Per subject, each expert's answer accuracy had it answered every question (`ok` (E, N))."""
    out = {}
    for s in sorted(set(subjects)):
        m = torch.tensor([x == s for x in subjects])
        out[s] = {n: mean(ok[k][m]) for k, n in enumerate(names)}
    return out


evaluate_mmlu = Evaluator.evaluate

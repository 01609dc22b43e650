"""`etr-hub eval tasks`: open-answer tasks (e.g. the skill experts), scored by generating answers.

Each line of the data file is `{"question": …, "answer": …, "task": …}` (optionally `"kind"`,
else inferred from the answer: see `etr_hub.eval.answers`). A task maps to the expert whose
manifest label is the task's name, or by `--map TASK=EXPERT`. Routing is read at the routing
position from the meta model's cached states, as in `eval mmlu`; answers are generated greedily
(at most `max_new_tokens`) by the model that answers, and the answer is extracted from the reply by
the documented rule of its kind. Generations are cached per (question, model, token budget), and
only the ones a number needs are made: the meta model's, the oracle expert's, the winning
expert's where its token fires, a seeded random expert's and each baseline router's pick.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from etr_hub.cache import digest, query_key
from etr_hub.errors import DataError
from etr_hub.eval.answers import KINDS, gold_value, infer_kind, is_correct
from etr_hub.eval.experts import NO_EXPERTS, ExpertEntry, experts_for, load_experts, no_group_maps
from etr_hub.eval.report import Routed, gap_closed, mean, per_group, per_group_meta
from etr_hub.eval.run import EvalOptions, Evaluator
from etr_hub.registry import Registry
from etr_hub.runtime.options import DEFAULT_MAX_NEW_TOKENS
from etr_hub.session import GENERAL_PROMPTS

GEN_FORMAT = "greedy-chat-v1"  # part of every generation cache key
MAX_QUESTION_CHARS = 4000
MAX_LISTED = 20  # lines left out that are named one warning each


@dataclass
class TaskItem:
    line: int
    question: str
    answer: str
    task: str
    kind: str


@dataclass
class TaskOptions:
    data: Path
    mapping: dict[str, str] = field(default_factory=dict)  # task -> expert name (--map)
    general_prompts: Path | None = GENERAL_PROMPTS
    batch_size: int = 8
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    baselines: bool = True
    seed: int = 0
    device: str | None = None  # where the models run (models/device.py; None: ETR_HUB_DEVICE, else auto)
    dtype: str | None = None

    def eval_options(self) -> EvalOptions:
        """What the evaluation shares with `eval mmlu` (the data read here, not as MMLU CSVs)."""
        return EvalOptions(
            data_dir=self.data,
            mapping=self.mapping,
            general_prompts=self.general_prompts,
            batch_size=self.batch_size,
            baselines=self.baselines,
            seed=self.seed,
            device=self.device,
            dtype=self.dtype,
        )


def read_tasks(path: Path) -> tuple[list[TaskItem], list[str]]:
    """(items, one message per line left out). Fails only if nothing at all is usable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path} does not exist", 'pass a JSONL file with one {"question", "answer", "task"} object per line'
        )
    items, skipped = [], []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        problem = None
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            problem = "not UTF-8"
        except (ValueError, RecursionError):
            problem = "not a JSON object"
        if problem is None and not isinstance(row, dict):
            problem = "not a JSON object"
        if problem is None:
            problem = _row_problem(row)
        if problem is not None:
            skipped.append(f"line {n}: {problem}")
            continue
        kind = row.get("kind") or infer_kind(row["answer"])
        try:
            gold_value(row["answer"], kind)
        except ValueError as e:
            skipped.append(f"line {n}: {e}")
            continue
        items.append(TaskItem(n, row["question"].strip(), row["answer"].strip(), row["task"].strip(), kind))
    if not items:
        first = f" ({skipped[0]})" if skipped else " (the file is empty)"
        raise DataError(f"no usable line in {path}{first}", "each line needs a non-empty question, answer and task")
    return items, skipped


def _row_problem(row: dict) -> str | None:
    for name in ("question", "answer", "task"):
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"missing or empty '{name}'"
    if len(row["question"]) > MAX_QUESTION_CHARS:
        return f"question over {MAX_QUESTION_CHARS:,} characters"
    kind = row.get("kind")
    if kind is not None and kind not in KINDS:
        return f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})"
    return None


class Generations:
    """Greedy replies per (model, question), cached as JSON lines under cache/generations."""

    def __init__(self, root: Path):
        self.dir = root / "generations"
        self._read: dict[str, dict[str, str]] = {}  # each model's file is read once per run

    def get(self, model_key: str) -> dict[str, str]:
        if model_key in self._read:
            return self._read[model_key]
        path = self.dir / f"{model_key[:40]}.jsonl"
        cached: dict[str, str] = self._read.setdefault(model_key, {})
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                    cached[row["q"]] = row["reply"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash: regenerated
        return cached

    def add(self, model_key: str, replies: dict[str, str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f"{model_key[:40]}.jsonl", "a", encoding="utf-8") as f:
            for q, reply in replies.items():
                f.write(json.dumps({"q": q, "reply": reply}, ensure_ascii=False) + "\n")
        if model_key in self._read:  # keep what was read in step with the file
            self._read[model_key].update(replies)


@torch.no_grad()
def generate_greedy(
    model,
    tokenizer,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    advance: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy replies to chat-templated prompts, in left-padded batches (longest first)."""
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id
    )
    device = next(model.parameters()).device
    replies: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T), left-padded
        mask = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T)
        for b, i in enumerate(batch):
            ids[b, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[b, width - len(prompts[i]) :] = 1
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )  # (B, T + new)
        for b, i in enumerate(batch):
            replies[i] = tokenizer.decode(out[b, width:], skip_special_tokens=True).strip()
        if advance is not None:
            advance(len(batch))
    return replies


class TaskEvaluator(Evaluator):
    def __init__(self, registry: Registry, opts: TaskOptions, *progress_and_status: Any):
        """`progress_and_status`: as for Evaluator."""
        super().__init__(registry, opts.eval_options(), *progress_and_status)
        self.task_opts = opts
        self.gens = Generations(registry.settings.cache_dir)

    def run(self) -> dict:
        items, skipped = read_tasks(self.task_opts.data)  # bad data fails before any model loads
        self._open()
        experts = load_experts(self.registry, self.fp, self.cache_fp)
        expert_of = experts_for({i.task for i in items}, experts, self.opts.mapping)
        if not experts:
            self.warnings.append(NO_EXPERTS)
            self._warn_skipped(skipped)
            report = self._meta_alone(items)
        else:
            for item in items:
                if expert_of[item.task] is None:
                    skipped.append(
                        f"line {item.line}: task '{item.task}' maps to no expert (no manifest label or `mapping`)"
                    )
            usable = [i for i in items if expert_of[i.task] is not None]
            self._warn_skipped(skipped)
            if not usable:
                raise no_group_maps(self.task_opts.data, experts, "task")
            report = self._evaluate_tasks(usable, experts, expert_of)
        report.update(
            {
                "data": str(self.task_opts.data),
                "skipped_lines": skipped,
                "meta": self.session.meta_row.display,
                "max_new_tokens": self.task_opts.max_new_tokens,
                "warnings": self.warnings,
            }
        )
        return report

    def _warn_skipped(self, skipped: list[str]) -> None:
        skipped.sort(key=lambda m: int(m.split(":")[0].removeprefix("line ")))
        self.warnings += [f"left out {m}" for m in skipped[:MAX_LISTED]]
        if len(skipped) > MAX_LISTED:
            self.warnings.append(
                f"left out {len(skipped) - MAX_LISTED} more line(s) (all in the report's skipped_lines)"
            )

    def _meta_alone(self, items: list[TaskItem]) -> dict:
        queries = [i.question for i in items]
        replies = self.replies(-1, [], queries, list(range(len(items))))
        ok = torch.tensor([is_correct(replies[k], i.answer, i.kind) for k, i in enumerate(items)])  # (N,)
        return {
            "n": len(items),
            "experts": [],
            "routing_accuracy": None,
            "accuracy": mean(ok),
            "fire_rate": None,
            "false_fire_rate": None,
            "gap_closed": None,
            "gap_closed_reason": "no experts registered",
            "per_task": per_group_meta([i.task for i in items], ok),
            "baselines": {"meta": {"accuracy": mean(ok)}},
        }

    # -- generations (cached, only where needed) --------------------------------------------------
    def _model_key(self, k: int, experts: list[ExpertEntry]) -> str:
        identity = "meta" if k < 0 else experts[k].score_key
        return digest(GEN_FORMAT, self.cache_fp, identity, str(self.task_opts.max_new_tokens))

    def replies(self, k: int, experts: list[ExpertEntry], queries: list[str], idx: list[int]) -> dict[int, str]:
        """Model k's (−1: the meta model) replies to queries[idx]."""
        from etr_hub.models.chat import routing_prompt_ids

        key = self._model_key(k, experts)
        cached = self.gens.get(key)
        qkeys = {i: query_key(queries[i]) for i in idx}
        missing = [i for i in idx if qkeys[i] not in cached]
        if missing:
            if k >= 0 and experts[k].ref.kind == "openai":
                self.warnings.append(f"expert {experts[k].name} is remote: its answers are the meta model's here")
                return self.replies(-1, experts, queries, idx)
            loaded = self.session.meta if k < 0 else self.session.expert(experts[k].ref)
            prompts = [routing_prompt_ids(loaded.tokenizer, queries[i])[0] for i in missing]
            what = "meta model" if k < 0 else experts[k].name
            texts = generate_greedy(
                loaded.model,
                loaded.tokenizer,
                prompts,
                max_new_tokens=self.task_opts.max_new_tokens,
                batch_size=self.opts.batch_size,
                advance=self.progress(f"answers: {what}", len(missing)),
            )
            new = {qkeys[i]: t for i, t in zip(missing, texts)}
            self.gens.add(key, new)  # also updates `cached`, the same dict
        return {i: cached[qkeys[i]] for i in idx}

    def _evaluate_tasks(
        self, items: list[TaskItem], experts: list[ExpertEntry], expert_of: dict[str, str | None]
    ) -> dict:
        names = [e.name for e in experts]
        queries = [i.question for i in items]
        gold = torch.tensor([names.index(str(expert_of[i.task])) for i in items])  # (N,): every item is mapped
        routed = self.route(queries, [query_key(q) for q in queries], experts, gold)
        answered = TaskAnswers(self, items, experts)
        meta_ok = answered(torch.full((len(items),), -1))
        oracle_ok = answered(gold)
        etr_ok = answered(routed.winner, routed.fired)
        rng = random.Random(self.opts.seed)
        random_route = torch.tensor([rng.randrange(len(experts)) for _ in items])
        meta_acc, oracle_acc, etr_acc = mean(meta_ok), mean(oracle_ok), mean(etr_ok)
        closed, reason = gap_closed(meta_acc, oracle_acc, etr_acc)
        accuracies = {"accuracy": etr_ok, "meta_accuracy": meta_ok, "oracle_accuracy": oracle_ok}
        per_task, confusion = per_group([i.task for i in items], expert_of, routed, accuracies)
        report: dict = {
            "n": len(items),
            "experts": names,
            "routing_accuracy": routed.routing_accuracy,
            "accuracy": etr_acc,
            "fire_rate": mean(routed.fired),
            "gap_closed": closed,
            "gap_closed_reason": reason,
            "per_task": per_task,
            "confusion": confusion,
        }
        random_expert = {
            "routing_accuracy": mean(random_route == gold),
            "accuracy": mean(answered(random_route)),
            "note": "one seeded random expert per question",
        }
        report["baselines"] = self._baselines(routed, answered, meta_acc, oracle_acc, random_expert)
        report["false_fire_rate"], report["general_prompts"] = self._false_fire(routed.w_e, names)
        report["examples"] = _examples(items, routed, answered, etr_ok)
        return report


class TaskAnswers:
    """answered(route, fire): whether the model each question was routed to (−1, or where `fire`
    is False: the meta model) answered it correctly. Replies are generated (and cached) only for
    the (model, question) pairs some routing asks about."""

    def __init__(self, evaluator: TaskEvaluator, items: list[TaskItem], experts: list[ExpertEntry]):
        self.evaluator, self.items, self.experts = evaluator, items, experts
        self.ok: dict[tuple[int, int], bool] = {}  # (model, question) -> correct
        self.replies: dict[tuple[int, int], str] = {}

    def __call__(self, route: torch.Tensor, fire: torch.Tensor | None = None) -> torch.Tensor:
        chosen = [int(r) if fire is None or bool(fire[i]) else -1 for i, r in enumerate(route)]
        self._need(chosen)
        return torch.tensor([self.ok[(k, i)] for i, k in enumerate(chosen)])  # (N,)

    def _need(self, route: list[int]) -> None:
        by_model: dict[int, list[int]] = {}
        for i, k in enumerate(route):
            if (k, i) not in self.ok:
                by_model.setdefault(k, []).append(i)
        queries = [i.question for i in self.items]
        for k, idx in sorted(by_model.items()):
            for i, text in self.evaluator.replies(k, self.experts, queries, idx).items():
                self.replies[(k, i)] = text
                self.ok[(k, i)] = is_correct(text, self.items[i].answer, self.items[i].kind)


def _examples(items: list[TaskItem], routed: Routed, answered: TaskAnswers, etr_ok: torch.Tensor) -> list[dict]:
    """The first five questions with where they went and the reply that counted."""
    examples = []
    for i in range(min(len(items), 5)):
        k = int(routed.winner[i]) if bool(routed.fired[i]) else -1
        examples.append(
            {
                "line": items[i].line,
                "task": items[i].task,
                "question": items[i].question,
                "answer": items[i].answer,
                "expert": routed.names[k] if k >= 0 else None,
                "reply": answered.replies[(k, i)],
                "correct": bool(etr_ok[i]),
            }
        )
    return examples


evaluate_tasks = TaskEvaluator.evaluate

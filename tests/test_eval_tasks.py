"""`etr-hub eval tasks` on tiny models: two tiny LoRA experts fine-tuned to give one number each,
hand-set tokens whose routing is known exactly, and reference replies generated here independently
(plain transformers greedy decoding, one question at a time). The report must match them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from etr_hub.eval.answers import is_correct
from tests.helpers import run_cli
from tests.test_mmlu_eval import _bundle, _states, forget_row_norms
from tests.tiny_models import make_tiny_llama, train_tiny_lora

TASKS = ("sevens", "nines")
QUESTIONS = {
    "sevens": ["how many days in a week?", "lucky number please", "what is 3 + 4?"],
    "nines": ["how many planets once?", "what is 3 * 3?", "cat lives?"],
}
# designed routing per question (winner, fires), in task order
DESIGN = [("sevens", True), ("sevens", True), ("nines", True), ("nines", True), ("nines", False), ("nines", True)]
GENERAL = [("Hi there!", "eval", False), ("Write me a poem.", "eval", True)]
MAX_NEW = 8


def _reference_reply(meta_dir: Path, adapter: Path | None, question: str) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(meta_dir)
    model = AutoModelForCausalLM.from_pretrained(meta_dir).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    out = model.generate(
        input_ids=torch.tensor([ids]),
        max_new_tokens=MAX_NEW,
        do_sample=False,
        pad_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return tok.decode(out[0, len(ids) :], skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tasks-world")
    meta = make_tiny_llama(root / "meta", hidden_size=32, seed=3)
    experts = {}
    for task, number in zip(TASKS, ("7", "9")):
        rows = [{"query": q, "response": f"= {number}"} for q in QUESTIONS[task] + [f"question {i}" for i in range(4)]]
        experts[task] = train_tiny_lora(meta, root / f"lora-{task}", rows, steps=40, lr=5e-2, seed=1)
    questions = [(t, q) for t in TASKS for q in QUESTIONS[t]]
    replies = {"meta": [_reference_reply(meta, None, q) for _, q in questions]}
    for t in TASKS:
        replies[t] = [_reference_reply(meta, experts[t], q) for _, q in questions]
    data = root / "tasks.jsonl"
    lines = [{"question": q, "answer": {"sevens": "7", "nines": "9"}[t], "task": t} for t, q in questions]
    bad = [
        '{"question": "no answer", "task": "sevens"}',
        "not json",
        '{"question": "q", "answer": "5", "task": "cooking"}',
        '{"question": "q", "answer": "", "task": "nines"}',
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in lines) + "\n".join(bad) + "\n")
    general = root / "general.jsonl"
    general.write_text("".join(json.dumps({"query": q, "split": s}) + "\n" for q, s, _ in GENERAL))
    # tokens solved so that routing realises DESIGN exactly (and the general prompts as designed)
    texts = [q for _, q in questions] + [q for q, s, _ in GENERAL if s == "eval"]
    h, top = _states(meta, texts)
    target = top.unsqueeze(1).repeat(1, len(TASKS)) - 4.0  # (N, E)
    design = DESIGN + [(None, f) for _, s, f in GENERAL if s == "eval"]
    for i, (winner, fires) in enumerate(design):
        target[i, TASKS.index(winner) if winner else 0] = float(top[i]) + (2.0 if fires else -2.0)
    w = torch.linalg.lstsq(h.double(), target.double()).solution.T.float()  # (E, C)
    return {
        "root": root,
        "meta": meta,
        "experts": experts,
        "questions": questions,
        "replies": replies,
        "data": data,
        "general": general,
        "w": w,
    }


@pytest.fixture(scope="module")
def registered(world):
    from etr_hub.config import Settings
    from etr_hub.models.refs import ModelRef
    from etr_hub.registry import Registry
    from etr_hub.registry.meta import register_meta_model

    home = world["root"] / "home"
    reg = Registry.open(Settings(home=home, database_url=f"sqlite:///{home / 'registry.db'}"))
    row = register_meta_model(reg, ModelRef.parse(str(world["meta"])))
    forget_row_norms(reg, row)
    for k, t in enumerate(TASKS):
        reg.add_expert(
            _bundle(
                world["root"] / "bundles" / t,
                t,
                world["w"][k],
                world["experts"][t],
                row.fingerprint,
                [f"{t} q{i}" for i in range(3)],
            )
        )
    return reg


def _evaluate(world, reg, **kw):
    from etr_hub.eval.tasks import TaskOptions, evaluate_tasks

    return evaluate_tasks(
        reg, TaskOptions(data=world["data"], general_prompts=world["general"], max_new_tokens=MAX_NEW, **kw)
    )


def test_routing_and_answers_match_the_reference(world, registered):
    r = _evaluate(world, registered, batch_size=1)
    qs, rep = world["questions"], world["replies"]
    n = len(qs)
    gold = [t for t, _ in qs]
    answers = [{"sevens": "7", "nines": "9"}[t] for t in gold]
    ok = {m: [is_correct(rep[m][i], answers[i], "integer") for i in range(n)] for m in rep}
    etr = [ok[w][i] if f else ok["meta"][i] for i, (w, f) in enumerate(DESIGN)]
    oracle = [ok[g][i] for i, g in enumerate(gold)]
    assert r["n"] == n and r["experts"] == sorted(TASKS)
    assert r["routing_accuracy"] == pytest.approx(5 / 6) and r["fire_rate"] == pytest.approx(5 / 6)
    assert r["confusion"]["sevens"] == {"sevens": 2, "nines": 1}
    assert r["accuracy"] == pytest.approx(sum(etr) / n)
    assert r["baselines"]["meta"]["accuracy"] == pytest.approx(sum(ok["meta"]) / n)
    assert r["baselines"]["oracle"]["accuracy"] == pytest.approx(sum(oracle) / n)
    assert sum(oracle) >= 4, f"the tiny experts should have learnt their number: {rep}"
    meta_acc, oracle_acc = sum(ok["meta"]) / n, sum(oracle) / n
    if oracle_acc > meta_acc:
        assert r["gap_closed"] == pytest.approx((sum(etr) / n - meta_acc) / (oracle_acc - meta_acc))
    else:
        assert r["gap_closed"] is None and "no gap" in r["gap_closed_reason"]
    assert r["false_fire_rate"] == pytest.approx(1 / 2)
    assert r["per_task"]["nines"]["fire_rate"] == pytest.approx(2 / 3)
    # every bad line is named and the rest evaluated
    skipped = " | ".join(r["skipped_lines"])
    for needle in (
        "line 7: missing or empty 'answer'",
        "line 8: not a JSON object",
        "line 9: task 'cooking' maps to no expert",
        "line 10: missing or empty 'answer'",
    ):
        assert needle in skipped


def test_batched_generation_matches_one_at_a_time(world, registered):
    from etr_hub.eval.tasks import generate_greedy
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.models.refs import ModelRef

    meta = load_causal_lm(ModelRef.parse(str(world["meta"])), role="meta")
    expert = load_causal_lm(ModelRef.parse(f"peft:{world['experts']['nines']}"), meta=meta)
    prompts = [routing_prompt_ids(expert.tokenizer, q)[0] for _, q in world["questions"]]
    batched = generate_greedy(expert.model, expert.tokenizer, prompts, max_new_tokens=MAX_NEW, batch_size=4)
    assert batched == world["replies"]["nines"]


def test_second_run_is_served_from_the_generation_cache(world, registered, monkeypatch):
    first = _evaluate(world, registered, batch_size=1)
    import etr_hub.eval.tasks as tasks_mod

    def refuse(*a, **k):
        raise AssertionError("generated although every reply is cached")

    monkeypatch.setattr(tasks_mod, "generate_greedy", refuse)
    second = _evaluate(world, registered, batch_size=1)
    for key in ("routing_accuracy", "accuracy", "baselines", "per_task", "confusion", "gap_closed"):
        assert second[key] == first[key]


def test_cli_json_plot_map_and_bad_input(world, registered, tmp_path):
    env = {"ETR_HUB_HOME": str(registered.settings.home)}
    png = tmp_path / "tasks.png"
    res = run_cli(
        "eval",
        "tasks",
        "--data",
        str(world["data"]),
        "--general-prompts",
        str(world["general"]),
        "--max-new-tokens",
        str(MAX_NEW),
        "--batch-size",
        "1",
        "--json",
        "--plot",
        str(png),
        env=env,
    )
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    for key in (
        "n",
        "routing_accuracy",
        "accuracy",
        "fire_rate",
        "false_fire_rate",
        "per_task",
        "baselines",
        "gap_closed",
        "confusion",
    ):
        assert key in r
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "line 9" in res.stderr  # the warning names the lines left out
    res = run_cli(
        "eval",
        "tasks",
        "--data",
        str(world["data"]),
        "--map",
        "cooking=sevens",
        "--json",
        "--no-baselines",
        "--max-new-tokens",
        str(MAX_NEW),
        "--batch-size",
        "1",
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["per_task"]["cooking"]["expert"] == "sevens"
    for args, needle in [
        (["--data", str(tmp_path / "none.jsonl")], "does not exist"),
        (["--data", str(world["data"]), "--map", "sevens=nobody"], "no enabled expert named 'nobody'"),
        (["--data", str(world["data"]), "--map", "oops"], "is not TASK=EXPERT"),
    ]:
        res = run_cli("eval", "tasks", *args, env=env)
        assert res.returncode not in (0, 70) and needle in res.stderr and "Traceback" not in res.stderr
        assert res.stderr.strip().count("\n") == 0
    empty = tmp_path / "bad.jsonl"
    empty.write_bytes(b'\xff\xfe not utf-8\n{"question": "q"}\n')
    res = run_cli("eval", "tasks", "--data", str(empty), env=env)
    assert res.returncode == 5 and "line 1: not UTF-8" in res.stderr


def test_empty_registry_reports_the_meta_model_alone(world, hub_home):
    from etr_hub.models.refs import ModelRef
    from etr_hub.registry import Registry
    from etr_hub.registry.meta import register_meta_model

    reg = Registry.open()
    register_meta_model(reg, ModelRef.parse(str(world["meta"])))
    r = _evaluate(world, reg, batch_size=1)
    answers = [{"sevens": "7", "nines": "9"}[t] for t, _ in world["questions"]]
    meta_ok = [is_correct(world["replies"]["meta"][i], a, "integer") for i, a in enumerate(answers)]
    # line 9's task 'cooking' has no expert to map to, but the meta model answers every usable line
    assert r["n"] == 7 and r["routing_accuracy"] is None
    assert r["per_task"]["sevens"]["accuracy"] == pytest.approx(sum(meta_ok[:3]) / 3)
    assert any("no experts are registered" in w for w in r["warnings"])

"""`etr-hub eval mmlu` on a tiny synthetic MMLU set, tiny random models and hand-set tokens.

The expert tokens are solved for (least squares on the meta model's routing-position states,
computed here independently of the eval) so that every question's expert logits, and so its
routing and whether a token fires, are known exactly; letter scores are recomputed here with
plain full forward passes. The eval's figures must match these by construction.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from etr_hub.eval.mmlu import LETTERS, read_mmlu_dir, render_query
from tests.helpers import run_cli
from tests.tiny_models import make_tiny_llama, make_tiny_lora

SUBJECTS = ("astronomy", "law", "cooking")
CSV = {
    "astronomy": [
        '"Why, of all things, is the sky blue?",scattering,"oceans, mostly",dust,paint,A',
        "Which planet is largest?,Mars,Jupiter,Venus,Earth,B",
        "What orbits the Earth?,Sun,Mars,Moon,Venus,C",
    ],
    "law": [
        '"A treaty binds whom?\nChoose one.",states,rivers,clouds,fish,A',
        "What does a court issue?,rain,rulings,bread,stars,B",
        "Who ratifies treaties?,cats,stones,states,waves,C",
    ],
    "cooking": [
        "What rises in an oven?,stone,bread,iron,glass,B",
        "What is salty?,sugar,honey,salt,milk,C",
        "What do you boil pasta in?,water,sand,oil,air,A",
    ],
}
# designed routing: (winner, fires) per question, in subject order; experts are named like the subjects
DESIGN = {
    "astronomy": [("astronomy", True), ("astronomy", True), ("law", True)],
    "law": [("law", True), ("law", False), ("law", True)],
    "cooking": [("cooking", True), ("cooking", True), ("cooking", True)],
}
GENERAL = [
    ("Hi there, how are you?", "eval", False),
    ("Write a haiku about tea.", "eval", True),
    ("Tell me a joke.", "eval", False),
    ("Plan my weekend.", "train", False),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mmlu-world")
    meta = make_tiny_llama(root / "meta", hidden_size=32, seed=1)
    experts = {s: make_tiny_lora(meta, root / f"lora-{s}", seed=10 + i) for i, s in enumerate(SUBJECTS)}
    data = root / "data"
    data.mkdir()
    for s, rows in CSV.items():
        (data / f"{s}_test.csv").write_text("\n".join(rows) + "\n")
    general = root / "general.jsonl"
    general.write_text("".join(json.dumps({"query": q, "split": sp}) + "\n" for q, sp, _ in GENERAL))
    return {"root": root, "meta": meta, "experts": experts, "data": data, "general": general}


def _states(meta_dir: Path, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent reference: (h (N, C), max word logit (N,)) at the end of the chat-templated prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(meta_dir)
    model = AutoModelForCausalLM.from_pretrained(meta_dir).eval()
    hs, tops = [], []
    with torch.no_grad():
        for t in texts:
            ids = tok.apply_chat_template(
                [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            out = model(input_ids=torch.tensor([list(ids)]), output_hidden_states=True)
            hs.append(out.hidden_states[-1][0, -1])
            tops.append(out.logits[0, -1].max())
    return torch.stack(hs), torch.stack(tops)


def _letter_choice(model_dir: Path, adapter: Path | None, queries: list[str]) -> list[int]:
    """Independent reference: argmax over the letters' logits after 'Answer: ' (one full forward each)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    letter_ids = [tok(" " + L, add_special_tokens=False)["input_ids"][-1] for L in LETTERS]
    picks = []
    with torch.no_grad():
        for q in queries:
            text = (
                tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
                + "Answer: "
            )
            logits = model(input_ids=torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])).logits[0, -1]
            picks.append(int(torch.stack([logits[i] for i in letter_ids]).argmax()))
    return picks


def _bundle(root: Path, name: str, row: torch.Tensor, adapter: Path, fp: str, queries: list[str]) -> Path:
    from etr_hub.bundle.io import write_token_bundle
    from etr_hub.bundle.manifest import MetaInfo, QuerySetInfo
    from etr_hub.models.refs import ModelRef
    from etr_hub.store import sha256_file

    query_set = root.with_name(f"{root.name}-query_set.jsonl")
    root.parent.mkdir(parents=True, exist_ok=True)
    query_set.write_text("".join(json.dumps({"query": q, "response": "x"}) + "\n" for q in queries))
    write_token_bundle(
        root,
        row,
        files={"adapter": adapter, "query_set.jsonl": query_set},
        name=name,
        version="1.0.0",
        description=f"knows {name}",
        license="MIT",
        provider="tests",
        label=name,
        expert=ModelRef(kind="peft", path="adapter"),
        meta=MetaInfo(reference="tiny", hidden_size=row.numel(), vocab_size=272, fingerprint=fp),
        query_set=QuerySetInfo(sha256=sha256_file(query_set), size=len(queries)),
    )
    return root


@pytest.fixture(scope="module")
def expected(world) -> dict:
    """Hand-set tokens realising DESIGN exactly, and the reference letter choices."""
    questions = [q for s in SUBJECTS for q in read_mmlu_dir(world["data"]).questions[s]]
    queries = [render_query(q) for q in questions]
    general_eval = [q for q, sp, _ in GENERAL if sp == "eval"]
    h, top = _states(world["meta"], queries + general_eval)
    # desired expert logits: the designed winner gets top+50 (fires) or top-50 (does not); others far below
    target = torch.full((len(h), len(SUBJECTS)), -1e3)
    design = [d for s in SUBJECTS for d in DESIGN[s]] + [(None, f) for _, sp, f in GENERAL if sp == "eval"]
    for i, (winner, fires) in enumerate(design):
        k = SUBJECTS.index(winner) if winner else 0
        target[i, k] = float(top[i]) + (50.0 if fires else -50.0)
    w = torch.linalg.lstsq(h.double(), target.double()).solution.T.float()  # (E, C): h @ w.T == target
    assert torch.allclose(h @ w.T, target, atol=1e-2)
    meta_pick = _letter_choice(world["meta"], None, queries)
    expert_pick = {s: _letter_choice(world["meta"], world["experts"][s], queries) for s in SUBJECTS}
    return {
        "questions": questions,
        "queries": queries,
        "w": w,
        "design": design,
        "meta_pick": meta_pick,
        "expert_pick": expert_pick,
    }


@pytest.fixture(scope="module")
def registered(world, expected):
    """One registry (and so one set of caches) for the module: later tests reuse what earlier ones computed."""
    from etr_hub.config import Settings
    from etr_hub.models.refs import ModelRef
    from etr_hub.registry import Registry
    from etr_hub.registry.meta import register_meta_model

    home = world["root"] / "home"
    reg = Registry.open(Settings(home=home, database_url=f"sqlite:///{home / 'registry.db'}"))
    row = register_meta_model(reg, ModelRef.parse(str(world["meta"])))
    forget_row_norms(reg, row)  # these rows are solved for exact logits, far beyond a trained row's size
    for k, s in enumerate(SUBJECTS):
        qs = [f"a {s} question number {i}?" for i in range(4)]
        reg.add_expert(
            _bundle(world["root"] / "bundles" / s, s, expected["w"][k], world["experts"][s], row.fingerprint, qs)
        )
    return reg


def forget_row_norms(reg, meta_row) -> None:
    """Forget the meta model's row-norm record, as a registry from before the check has none, so
    `expert add` takes rows solved for exact logits (far beyond a trained row's size)."""
    from etr_hub.registry.tables import MetaModel

    with reg.session(write=True) as s:
        s.get(MetaModel, meta_row.id).max_row_norm = None


def _evaluate(world, reg, **kw):
    from etr_hub.eval.run import EvalOptions, evaluate_mmlu

    return evaluate_mmlu(reg, EvalOptions(data_dir=world["data"], general_prompts=world["general"], **kw))


def test_routing_firing_and_answers_match_the_design(world, expected, registered):
    r = _evaluate(world, registered)
    qs, design = expected["questions"], expected["design"]
    n = len(qs)
    assert r["n"] == n == 9 and r["experts"] == sorted(SUBJECTS)
    gold = [q.subject for q in qs]
    winners = [d[0] for d in design[:n]]
    fires = [d[1] for d in design[:n]]
    assert r["routing_accuracy"] == pytest.approx(sum(w == g for w, g in zip(winners, gold)) / n)  # 8/9
    assert r["fire_rate"] == pytest.approx(sum(fires) / n)  # 8/9
    assert r["confusion"]["astronomy"] == {"astronomy": 2, "cooking": 0, "law": 1}
    answers = [q.answer_index for q in qs]
    meta_ok = [p == a for p, a in zip(expected["meta_pick"], answers)]
    ok = {s: [p == a for p, a in zip(expected["expert_pick"][s], answers)] for s in SUBJECTS}
    etr_ok = [ok[w][i] if f else meta_ok[i] for i, (w, f) in enumerate(zip(winners, fires))]
    oracle_ok = [ok[g][i] for i, g in enumerate(gold)]
    assert r["accuracy"] == pytest.approx(sum(etr_ok) / n)
    assert r["baselines"]["meta"]["accuracy"] == pytest.approx(sum(meta_ok) / n)
    assert r["baselines"]["oracle"]["accuracy"] == pytest.approx(sum(oracle_ok) / n)
    assert r["baselines"]["random"]["accuracy"] == pytest.approx(sum(sum(v) for v in ok.values()) / (3 * n))
    assert r["baselines"]["random"]["routing_accuracy"] == pytest.approx(1 / 3)
    assert r["per_subject"]["law"]["fire_rate"] == pytest.approx(2 / 3)
    assert r["expert_accuracy"]["law"]["cooking"] == pytest.approx(sum(ok["cooking"][3:6]) / 3)
    # general prompts: exactly the one designed to fire does
    assert r["false_fire_rate"] == pytest.approx(1 / 3)
    assert r["general_prompts"]["examples"] == ["Write a haiku about tea."]
    for key in ("prompt_router", "embedding_router"):
        b = r["baselines"][key]
        assert 0 <= b["routing_accuracy"] <= 1 and 0 <= b["accuracy"] <= 1
    d = r["dynamic"]
    assert d["added_later"] == ["cooking", "law"]
    assert set(d["static"]) == {"routing_accuracy", "accuracy", "fire_rate"}


def test_second_run_is_served_from_the_caches(world, expected, registered, monkeypatch):
    first = _evaluate(world, registered)  # computes whatever an earlier test did not
    from etr_hub.session import ModelSession

    def refuse(*a, **k):
        raise AssertionError("a model was loaded although every score is cached")

    monkeypatch.setattr(ModelSession, "meta", property(refuse))  # the one class every caller loads through
    monkeypatch.setattr(ModelSession, "expert", refuse)
    second = _evaluate(world, registered)
    for key in (
        "routing_accuracy",
        "accuracy",
        "fire_rate",
        "false_fire_rate",
        "baselines",
        "per_subject",
        "confusion",
    ):
        assert second[key] == first[key]


def test_in_bfloat16_the_eval_runs_its_own_passes_cached_apart(world, expected, registered):
    """--dtype bfloat16: every pass (routing states, letter scores, the baselines' embeddings, the
    plug-and-play retraining) runs again in bfloat16 and is cached apart from float32's. (Routing is
    not compared: these rows, solved for logits of ±1,000, have norms near 11,000, which turn bfloat16's
    rounding of h into logit errors of ±50; a trained row is a fraction of the largest word row's norm,
    and tests/test_devices.py compares routing across dtypes with such a row.)"""
    from etr_hub.cache import StateCache, query_key

    first = _evaluate(world, registered)
    half = _evaluate(world, registered, dtype="bfloat16")
    assert set(half) == set(first) and set(half["baselines"]) == set(first["baselines"])
    for key in ("routing_accuracy", "fire_rate", "false_fire_rate", "accuracy"):
        assert 0 <= half[key] <= 1, key
    fp = registered.require_meta().fingerprint
    root = registered.settings.cache_dir
    assert {p.name for p in (root / "states").iterdir()} == {fp[:32], f"{fp[:32]}-bfloat16"}
    keys = [query_key(q) for q in expected["queries"]]
    s32, missing32 = StateCache(root, fp).get(keys)
    s16, missing16 = StateCache(root, fp, "bfloat16").get(keys)
    assert missing32 == missing16 == [] and s32 is not None and s16 is not None
    h32, h16 = s32.hidden, s16.hidden
    assert not torch.equal(h32, h16) and torch.allclose(h32, h16, rtol=0.05, atol=0.05)  # its own, rounded pass


def test_map_overrides_labels_and_unmapped_subjects_are_reported(world, registered):
    r = _evaluate(world, registered, subjects=["astronomy", "law"], mapping={"law": "cooking"})
    assert r["n"] == 6 and r["per_subject"]["law"]["expert"] == "cooking"
    r = _evaluate(world, registered, mapping={"law": "cooking", "cooking": "cooking"})
    assert r["per_subject"]["law"]["expert"] == "cooking"


def test_subject_without_an_expert_is_skipped_and_reported(world, registered, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    (data / "virology_test.csv").write_text("What is a virus?,a,b,c,d,A\n")
    (data / "law_test.csv").write_text((data / "law_test.csv").read_text() + "bad row,a,b,c,d,Z\n")
    from etr_hub.eval.run import EvalOptions, evaluate_mmlu

    r = evaluate_mmlu(registered, EvalOptions(data_dir=data, general_prompts=world["general"], baselines=False))
    assert r["n"] == 9 and r["unmapped_subjects"] == {"virology": 1}
    assert r["skipped_rows"] == ["law_test.csv:5: answer 'Z' is not one of A, B, C, D"]
    assert any("virology" in w for w in r["warnings"]) and any("malformed" in w for w in r["warnings"])


def test_cli_json_plot_and_bad_input(world, registered, tmp_path):
    png = tmp_path / "confusion.png"
    env = {"ETR_HUB_HOME": str(registered.settings.home)}
    res = run_cli(
        "eval",
        "mmlu",
        "--data-dir",
        str(world["data"]),
        "--general-prompts",
        str(world["general"]),
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
        "per_subject",
        "baselines",
        "dynamic",
    ):
        assert key in r
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = run_cli("eval", "mmlu", "--data-dir", str(tmp_path / "empty"), env=env)
    assert res.returncode != 0 and res.stderr.strip().count("\n") == 0 and "not a directory" in res.stderr
    (tmp_path / "empty").mkdir()
    res = run_cli("eval", "mmlu", "--data-dir", str(tmp_path / "empty"), env=env)
    assert res.returncode != 0 and "no .csv files" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("eval", "mmlu", "--data-dir", str(world["data"]), "--map", "law=nobody", env=env)
    assert res.returncode != 0 and "no enabled expert named 'nobody'" in res.stderr


def test_empty_registry_reports_the_meta_model_alone(world, hub_home):
    from etr_hub.models.refs import ModelRef
    from etr_hub.registry import Registry
    from etr_hub.registry.meta import register_meta_model

    reg = Registry.open()
    register_meta_model(reg, ModelRef.parse(str(world["meta"])))
    r = _evaluate(world, reg)
    assert r["n"] == 9 and r["routing_accuracy"] is None and 0 <= r["accuracy"] <= 1
    assert any("no experts are registered" in w for w in r["warnings"])

"""The admission report at `expert add` (issue 14, item 1): hand-set routing states in the meta model's
state cache and hand-set tokens, so every number is known exactly and no model loads.

States: each query's h is 10 along one axis (e0 astronomy, e1 law, e2 everyday), the top word logit 5
(lse_V 6), so an expert whose row is e_k scores 10 on its own queries and beats the words there. Law's last three
queries also carry 20 along e3: a row with an e3 part takes exactly those (3/5 = 60%)."""

from __future__ import annotations

import json

import pytest
import torch

from etr_hub.cache import RoutingStates, StateCache, query_key
from etr_hub.jsonl import query_column
from etr_hub.routing.math import WORD, admission_winners
from etr_hub.session import read_general_prompts
from tests.helpers import FAKE_FP, HIDDEN, make_bundle, run_cli, write_manifest

TOP, LSE = 5.0, 6.0


def axis(*weights: tuple[int, float]) -> torch.Tensor:
    row = torch.zeros(1, HIDDEN)
    for k, w in weights:
        row[0, k] = w
    return row


def token_bundle(root, name: str, row: torch.Tensor, seed: int = 0):
    """make_bundle's bundle with its token replaced by `row` (1, HIDDEN)."""
    from safetensors.torch import save_file

    from etr_hub.store import sha256_file

    make_bundle(root, name, seed=seed)
    save_file({"expert_token": row.contiguous()}, str(root / "token.safetensors"))
    manifest = json.loads((root / "expert.json").read_text())
    manifest["token"]["sha256"] = sha256_file(root / "token.safetensors")
    write_manifest(root, manifest)
    return root


def cache_states(registry, queries: list[str], hidden: torch.Tensor) -> None:
    n = len(queries)
    states = RoutingStates(hidden, torch.full((n,), LSE), torch.full((n,), TOP))
    StateCache(registry.settings.cache_dir, FAKE_FP).put([query_key(q) for q in queries], states)


@pytest.fixture
def hub(registry, fake_meta, tmp_path, monkeypatch):
    """A registry with one expert 'law' (row e1, recall 100%) and every routing state cached."""
    monkeypatch.setenv("ETR_HUB_ADMISSION_REPORT", "1")  # the suite turns it off (conftest): back on, as by default
    law = token_bundle(tmp_path / "law", "law", axis((1, 1.0)), seed=1)
    astro = make_bundle(tmp_path / "astro-queries", "astronomy", seed=2)  # its query set: the new experts'
    registry.add_expert(law)
    law_q = query_column(law / "query_set.jsonl")
    astro_q = query_column(astro / "query_set.jsonl")
    everyday = read_general_prompts(split="eval")
    assert len(law_q) == len(astro_q) == 5 and everyday
    cache_states(registry, astro_q, axis((0, 10.0)).repeat(5, 1))
    cache_states(registry, law_q, torch.cat([axis((1, 10.0))] * 2 + [axis((1, 10.0), (3, 20.0))] * 3))
    cache_states(registry, everyday, axis((2, 10.0)).repeat(len(everyday), 1))
    return tmp_path, astro


def new_bundle(hub, row: torch.Tensor):
    """An 'astronomy' bundle with the cached astronomy query set and token `row`."""
    tmp_path, astro = hub
    root = token_bundle(tmp_path / "new", "astronomy", row, seed=2)
    assert query_column(root / "query_set.jsonl") == query_column(astro / "query_set.jsonl")
    return root


def test_winners_one_matmul_ties_to_the_lower_index():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (3, 2)
    top = torch.tensor([0.5, 0.5, 3.0])  # the top word logits
    states = (h, top + 1.0, top)
    w_e, bias = torch.tensor([[1.0, 0.0]]), torch.zeros(1)  # expert 0 scores 1, 0, 1
    row = torch.tensor([[1.0, 2.0]])  # the new one scores 1 (a tie with expert 0), 2, 3 (a tie with the words)
    before, after = admission_winners(states, w_e, bias, row)
    assert before.tolist() == [1, WORD, WORD]
    assert after.tolist() == [1, 2, WORD]
    nan_row = torch.tensor([[float("nan"), 0.0]])
    assert admission_winners(states, w_e, bias, nan_row)[1].tolist() == [1, WORD, WORD]  # non-finite never routes
    assert admission_winners(states, w_e, bias, row, row_bias=-1.5)[1].tolist() == [1, WORD, WORD]  # 2 - 1.5 < 0.5


def greedy_winners(h, w_v, w_e, bias, min_p=0.0):
    """The decoder's own rule, written out: argmax of [W_V h; W_E h + b], an expert only with p >= min_p."""
    logits = torch.cat([h @ w_v.T, h @ w_e.T + bias], dim=-1)  # (B, V + N)
    v = w_v.shape[0]
    pick = logits.argmax(dim=-1)  # (B,)
    p = torch.softmax(logits, dim=-1).gather(-1, pick.unsqueeze(-1)).squeeze(-1)  # (B,)
    return torch.where((pick >= v) & (p >= min_p), pick - v + 1, WORD)


@pytest.mark.parametrize(("n", "min_p"), [(0, 0.0), (1, 0.0), (7, 0.0), (7, 0.3), (3, 0.6)])
def test_winners_match_greedy_decoding_over_words_and_experts(n, min_p):
    g = torch.Generator().manual_seed(n)
    h, w_v = torch.randn(2000, 8, generator=g), torch.randn(50, 8, generator=g) * 0.6
    w_e, row = torch.randn(n, 8, generator=g), torch.randn(1, 8, generator=g)
    bias, row_bias = torch.randn(n, generator=g), 0.7
    word = h @ w_v.T  # (B, V)
    states = (h, torch.logsumexp(word, dim=-1), word.max(dim=-1).values)
    before, after = admission_winners(states, w_e, bias, row, row_bias, min_p)
    assert torch.equal(before, greedy_winners(h, w_v, w_e, bias, min_p))
    assert torch.equal(
        after, greedy_winners(h, w_v, torch.cat([w_e, row]), torch.cat([bias, torch.tensor([0.7])]), min_p)
    )
    assert len(set(after.tolist())) >= min(n + 2, 4)  # several classes win: the test can tell them apart
    if min_p:  # and the minimum switch probability kept some positions with the meta model
        assert int((after == WORD).sum()) > int((admission_winners(states, w_e, bias, row, row_bias)[1] == WORD).sum())


def test_report_exact_numbers(registry, hub):
    from etr_hub.bundle import load_bundle
    from etr_hub.eval.admission import admission_report

    report = admission_report(registry, load_bundle(new_bundle(hub, axis((0, 1.0), (3, 1.0)))))
    assert (report.queries, report.recall, report.false_fire) == (5, 1.0, 0.0)
    (law,) = report.experts
    assert (law.name, law.queries, law.steal, law.recall_before, law.recall_after) == ("law", 5, 0.6, 1.0, 0.4)

    never = admission_report(registry, load_bundle(new_bundle(hub, axis((0, -1.0), (2, -1.0)))))
    assert (never.recall, never.false_fire, never.experts[0].steal, never.experts[0].recall_after) == (0, 0, 0, 1)


def _add(*args: str):
    return run_cli("expert", "add", *args)


def _names(registry) -> list[str]:
    return sorted(e.name for e in registry.list_experts())


def test_greedy_token_refused_by_max_steal(registry, hub):
    greedy = new_bundle(hub, axis((0, 2.0), (1, 2.0), (2, 2.0)))  # 20 everywhere: beats words and law
    checked = _add(str(greedy), "--check-only", "--json")
    assert checked.returncode == 0, checked.stderr
    out = json.loads(checked.stdout)
    assert out["registered"] is False
    a = out["admission"]
    assert (a["recall"], a["false_fire"], a["max_steal"]) == (1.0, 1.0, 1.0)
    assert a["experts"] == [{"name": "law", "queries": 5, "steal": 1.0, "recall_before": 1.0, "recall_after": 0.0}]
    assert _names(registry) == ["law"]  # --check-only registers nothing

    refused = _add(str(greedy), "--max-steal", "0.5")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: expert 'astronomy' would take 100% of 'law'")
    assert "--max-steal 0.5" in refused.stderr and "admission report" in refused.stderr  # the table, then why
    assert _names(registry) == ["law"]

    fires = _add(str(greedy), "--max-false-fire", "0.1")
    assert fires.returncode == 2 and "100% of the everyday prompts" in fires.stderr
    assert _names(registry) == ["law"]


def test_add_reports_then_registers(registry, hub):
    quiet = new_bundle(hub, axis((0, 1.0)))
    added = _add(str(quiet), "--max-steal", "0", "--max-false-fire", "0", "--json")
    assert added.returncode == 0, added.stderr
    out = json.loads(added.stdout)
    assert out["registered"] is True and out["name"] == "astronomy"
    assert (out["admission"]["recall"], out["admission"]["max_steal"]) == (1.0, 0.0)
    assert _names(registry) == ["astronomy", "law"]
    assert registry.get_expert("astronomy").admission == out["admission"]  # recorded next to the expert
    assert registry.get_expert("law").admission is None  # added without one (the fixture)

    shown = run_cli("expert", "show", "astronomy", "--json")
    assert json.loads(shown.stdout)["admission"] == out["admission"]
    table = run_cli("expert", "show", "astronomy")
    assert "admission report: astronomy" in table.stdout and "everyday prompts" in table.stdout, table.stdout

    again = _add(str(quiet), "--check-only")  # its own older version is not among the others
    assert again.returncode == 0, again.stderr
    assert "admission report: astronomy" in again.stderr and "law" in again.stderr


def test_silent_token_recall_zero_and_bad_input(registry, hub, tmp_path):
    silent = new_bundle(hub, axis((0, -1.0)))
    checked = _add(str(silent), "--check-only", "--json")
    assert json.loads(checked.stdout)["admission"]["recall"] == 0.0

    no_qs = token_bundle(tmp_path / "no-qs", "empty", axis((0, 1.0)))
    (no_qs / "query_set.jsonl").unlink()
    manifest = json.loads((no_qs / "expert.json").read_text())
    del manifest["query_set"]
    write_manifest(no_qs, manifest)
    refused = _add(str(no_qs))
    assert refused.returncode == 2 and "query set is missing or empty" in refused.stderr
    assert "--no-report" in refused.stderr and _names(registry) == ["law"]
    assert _add(str(no_qs), "--no-report").returncode == 0 and _names(registry) == ["empty", "law"]
    assert registry.get_expert("empty").admission is None
    assert "no admission report" in run_cli("expert", "show", "empty").stdout

    for bad in (["--max-steal", "1.5"], ["--max-false-fire", "nan"], ["--no-report", "--check-only"]):
        usage = _add(str(silent), *bad)
        assert usage.returncode == 2 and len(usage.stderr.strip().splitlines()) == 1, usage.stderr
    assert _names(registry) == ["empty", "law"]


def test_switched_off_by_default_but_not_when_asked(registry, hub, monkeypatch):
    greedy = new_bundle(hub, axis((0, 2.0), (1, 2.0), (2, 2.0)))
    monkeypatch.setenv("ETR_HUB_ADMISSION_REPORT", "0")
    refused = _add(str(greedy), "--max-steal", "0.5")  # a limit asks for the report
    assert refused.returncode == 2 and _names(registry) == ["law"]
    added = _add(str(greedy), "--json")
    assert added.returncode == 0, added.stderr
    assert "admission" not in json.loads(added.stdout) and registry.get_expert("astronomy").admission is None

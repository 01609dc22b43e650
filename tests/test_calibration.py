"""Per-expert calibration (issue 14, item 2): `etr-hub expert tune`, a bias per expert and the hub's min_p.

The math is checked against the routing rule itself on random states; the command on hand-set
routing states (no model loads, every number known); and on a real tiny meta model, the hub's own
decisions (`explain`) before and after a tune change exactly where the report says they do."""

from __future__ import annotations

import json
import math

import pytest
import torch

from etr_hub.routing.calibration import MARGIN, bias_for_share, bias_under_share, win_thresholds
from etr_hub.routing.math import routing_winners
from etr_hub.session import read_general_prompts
from tests.helpers import run_cli
from tests.test_admission import axis, cache_states, token_bundle

INF = math.inf


@pytest.mark.parametrize(
    ("thresholds", "share", "lowest"),
    [
        ([-9, -8, -7, -6, -5], 0.6, -7 + MARGIN),  # the third easiest position
        ([-9, -8, -7, -6, -5], 1.0, -5 + MARGIN),
        ([-9, -8, -7, -6, -5], 0.0, -INF),  # any bias takes none... or more: "at least 0"
        ([-9, -8, -7, -6, -5], 0.01, -9 + MARGIN),
        ([3, INF, 1], 0.5, 3 + MARGIN),
        ([3, INF, 1], 1.0, INF),  # a position no bias takes
    ],
)
def test_bias_for_share(thresholds, share, lowest):
    assert bias_for_share(torch.tensor(thresholds, dtype=torch.float), share) == pytest.approx(lowest)


@pytest.mark.parametrize(
    ("thresholds", "share", "highest"),
    [
        ([-9, -8, -7, -6, -5], 0.0, -9 - MARGIN),  # not even the easiest one
        ([-9, -8, -7, -6, -5], 0.4, -7 - MARGIN),  # two of five
        ([-9, -8, -7, -6, -5], 0.5, -7 - MARGIN),  # still two: 2.5 positions are not allowed
        ([-9, -8, -7, -6, -5], 1.0, INF),
        ([3, INF, 1], 0.67, INF - MARGIN),
    ],
)
def test_bias_under_share(thresholds, share, highest):
    assert bias_under_share(torch.tensor(thresholds, dtype=torch.float), share) == pytest.approx(highest)


def _shares(h, top, lse, w_e, bias, k, min_p):
    return int((routing_winners(h, top, lse, w_e, bias, min_p) == 1 + k).sum()) / h.shape[0]  # exact: 120/400 is 0.3


@pytest.mark.parametrize(("n", "k", "min_p"), [(1, 0, 0.0), (4, 2, 0.0), (4, 0, 0.25), (6, 5, 0.6)])
def test_found_biases_are_exact_against_the_routing_rule(n, k, min_p):
    g = torch.Generator().manual_seed(n * 10 + k)
    h, w_e = torch.randn(400, 8, generator=g), torch.randn(n, 8, generator=g)
    top = torch.randn(400, generator=g).abs()
    lse, bias = top + torch.rand(400, generator=g) * 3, torch.randn(n, generator=g) * 0.5
    t = win_thresholds((h, lse, top), w_e, bias, k, min_p)  # (B,)
    for share in (0.05, 0.3, 0.5, 0.9):
        b = bias_for_share(t, share)
        if b == INF:
            continue
        at, below = bias.clone(), bias.clone()
        at[k], below[k] = b, b - 2 * MARGIN
        assert _shares(h, top, lse, w_e, at, k, min_p) >= share - 1e-9  # reaches it...
        assert _shares(h, top, lse, w_e, below, k, min_p) < share  # ... and is the lowest that does
        c = bias_under_share(t, share)
        at[k], above = c, bias.clone()
        above[k] = c + 2 * MARGIN
        assert _shares(h, top, lse, w_e, at, k, min_p) <= share + 1e-9  # within it...
        assert _shares(h, top, lse, w_e, above, k, min_p) > share  # ... and the highest that is


# -- the command on hand-set routing states ------------------------------------------------------
@pytest.fixture
def tuned_hub(registry, fake_meta, tmp_path):
    """'astronomy' (row e0) and 'law' (row e1), top word logit 5 everywhere. Astronomy's queries score
    10..14 for it (bias thresholds -5..-9); the first 2 everyday prompts score 16 and the next 2 score
    6 for it (thresholds -11, -1), the rest 0; law scores 10 on its own queries, 0 elsewhere."""
    astro = token_bundle(tmp_path / "astro", "astronomy", axis((0, 1.0)), seed=2)
    law = token_bundle(tmp_path / "law", "law", axis((1, 1.0)), seed=1)
    registry.add_expert(astro)
    registry.add_expert(law)
    from etr_hub.jsonl import query_column

    cache_states(registry, query_column(astro / "query_set.jsonl"), torch.cat([axis((0, 10.0 + i)) for i in range(5)]))
    cache_states(registry, query_column(law / "query_set.jsonl"), axis((1, 10.0)).repeat(5, 1))
    everyday = read_general_prompts(split="eval")
    scores = [16.0, 16.0, 6.0, 6.0] + [0.0] * (len(everyday) - 4)
    cache_states(registry, everyday, torch.cat([axis((2, 10.0), (0, s)) for s in scores]))
    return len(everyday)


def _tune(*args: str):
    return run_cli("expert", "tune", *args)


def _rates(rows: list[dict]) -> dict:
    return {r["name"]: (r["bias"], r["recall"], r["false_fire"]) for r in rows}


def test_tune_by_value_target_and_false_fire_limit(registry, tuned_hub):
    n = tuned_hub
    r = _tune("astronomy", "--bias", "-6", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert _rates(out["before"]) == {"astronomy": (0.0, 1.0, 4 / n), "law": (0.0, 1.0, 0.0)}
    assert _rates(out["after"]) == {"astronomy": (-6.0, 0.6, 2 / n), "law": (0.0, 1.0, 0.0)}  # 11 - 6 ≤ 5 < 12 - 6
    assert registry.get_expert("astronomy").bias == -6.0
    report = registry.get_expert("astronomy").admission  # measured again at the new bias
    assert (report["bias"], report["recall"], report["false_fire"]) == (-6.0, 0.6, 2 / n)
    assert json.loads(run_cli("expert", "show", "astronomy", "--json").stdout)["admission"] == report

    r = _tune("astronomy", "--target-recall", "0.6", "--json")  # the lowest bias that takes 3 of 5: just over -7
    after = _rates(json.loads(r.stdout)["after"])
    assert after["astronomy"][1] == 0.6 and after["astronomy"][0] == pytest.approx(-7 + MARGIN)

    r = _tune("astronomy", "--max-false-fire", "0", "--json")  # never above today's (-7): -11 - margin
    after = _rates(json.loads(r.stdout)["after"])
    assert after["astronomy"] == (pytest.approx(-11 - MARGIN), 0.0, 0.0)

    r = _tune("astronomy", "--target-recall", "1", "--max-false-fire", "0.25", "--json")
    after = _rates(json.loads(r.stdout)["after"])
    assert after["astronomy"] == (pytest.approx(-5 + MARGIN), 1.0, 2 / n)  # 16 - 5 fires, 6 - 5 does not

    table = _tune("astronomy", "--bias", "0", "--dry-run")
    assert table.returncode == 0 and "→" in table.stdout and "dry run" in table.stdout
    assert registry.get_expert("astronomy").bias == pytest.approx(-5 + MARGIN)  # a dry run writes nothing


def test_min_p_is_hub_wide_and_measured(registry, tuned_hub):
    r = _tune("--min-p", "0.999", "--json")  # p(astronomy) = e^10 / (e^6 + e^10) ≈ 0.982 on its first query
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["name"], out["min_p_before"], out["min_p_after"]) == (None, 0.0, 0.999)
    after = _rates(out["after"])
    assert after["law"][1] == 0.0 and after["astronomy"][1] == 0.4  # 13 and 14: p ≥ 0.999; 10-12 are not
    assert registry.require_meta().min_p == 0.999
    assert registry.get_expert("law").admission["min_p"] == 0.999  # every report measured again


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["astronomy", "--bias", "nan"], 2, "--bias must be a finite number"),
        (["astronomy", "--bias", "inf"], 2, "--bias must be a finite number"),
        (["astronomy", "--target-recall", "1.5"], 2, "--target-recall must be a share between 0 and 1"),
        (["astronomy", "--max-false-fire", "-0.1"], 2, "--max-false-fire must be a share"),
        (["--min-p", "2"], 2, "--min-p must be"),
        (["astronomy", "--bias", "1", "--target-recall", "0.5"], 2, "pass either, not both"),
        (["astronomy"], 2, "nothing to tune"),
        (["--bias", "1"], 2, "name the expert"),
        (["nobody", "--bias", "1"], 3, "no expert named 'nobody'"),
        (["astronomy", "--target-recall", "0.2", "--max-false-fire", "0"], 1, "cannot have both"),
        (["astronomy", "--min-p", "1", "--target-recall", "0.5"], 1, "cannot reach a recall of 50%"),
    ],
)
def test_bad_input_one_line_registry_unchanged(registry, tuned_hub, args, code, says):
    r = _tune(*args)
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], r.stderr
    assert [e.bias for e in registry.list_experts()] == [0.0, 0.0]
    assert registry.require_meta().min_p == 0.0


# -- a real tiny meta model: the hub's own decisions move exactly as the report says --------------
def _winners(texts: list[str]) -> list[str | None]:
    from etr_hub.runtime import Hub

    hub = Hub.open()
    try:
        return [hub.explain(t, top=1).winner for t in texts]
    finally:
        hub.close()


def _measured(winners: list[str | None], spans: dict[str, tuple[int, int]], everyday: tuple[int, int]) -> dict:
    """Each expert's recall on its own query set and false-fire rate, from the hub's decisions."""

    def share(span, name):
        part = winners[span[0] : span[1]]
        return sum(w == name for w in part) / len(part)

    return {name: (share(span, name), share(everyday, name)) for name, span in spans.items()}


def test_tuning_one_expert_moves_only_what_the_numbers_predict(world):
    from etr_hub.registry import Registry
    from etr_hub.session import query_set_queries
    from tests.helpers import build_labelled, init_world, invoke

    init_world(world)
    for name in ("astronomy", "law", "cooking"):
        build_labelled(world, name)
        assert invoke("train-token", name).returncode == 0
    reg = Registry.open()
    texts, spans = [], {}
    for e in reg.list_experts(enabled_only=True):
        own = query_set_queries(reg, reg.query_set_for(e))
        spans[e.name] = (len(texts), len(texts) + len(own))
        texts += own
    general = read_general_prompts(split="eval")
    everyday = (len(texts), len(texts) + len(general))
    texts += general

    before = _winners(texts)
    r = invoke("expert", "tune", "law", "--target-recall", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    after = _winners(texts)

    predicted = {x["name"]: (x["recall"], x["false_fire"]) for x in out["after"]}
    assert _measured(after, spans, everyday) == predicted  # the hub routes as the report said it would
    assert _measured(before, spans, everyday) == {x["name"]: (x["recall"], x["false_fire"]) for x in out["before"]}
    changed = [(b, a) for b, a in zip(before, after) if b != a]
    assert changed, "the tune changed nothing: the test cannot tell"
    assert all("law" in pair for pair in changed)  # only decisions to or from the tuned expert moved
    assert predicted["law"][0] >= 0.5
    shown = invoke("explain", texts[spans["law"][0]], "--json")  # raw and calibrated scores side by side
    law = next(e for e in json.loads(shown.stdout)["experts"] if e["name"] == "law")
    assert law["bias"] == out["after"][-1]["bias"] != 0
    assert law["logit"] == pytest.approx(law["raw_logit"] + law["bias"], abs=1e-4)
    assert (law["probability"] > law["raw_probability"]) == (law["bias"] > 0)

    r = invoke("expert", "tune", "--min-p", "0.9", "--json")  # hub-wide: the same check
    assert r.returncode == 0, r.stderr
    predicted = {x["name"]: (x["recall"], x["false_fire"]) for x in json.loads(r.stdout)["after"]}
    assert _measured(_winners(texts), spans, everyday) == predicted


def test_a_router_refuses_calibration_it_cannot_apply(registry, tuned_hub, tmp_path):
    """In front of an engine the token is the engine's pick: a bias or min_p would be silently ignored."""
    from etr_hub.errors import EtrHubError
    from etr_hub.runtime import Hub

    registry.set_bias("astronomy", -2.0)
    with pytest.raises(EtrHubError, match=r"calibration \(bias on astronomy -2\) cannot be applied by a router"):
        Hub.open(registry, meta_url="http://127.0.0.1:9/v1", meta_export=tmp_path)
    registry.set_bias("astronomy", 0.0)
    with pytest.raises(EtrHubError, match=r"calibration \(min_p 0.3\)"):
        Hub.open(registry, meta_url="http://127.0.0.1:9/v1", meta_export=tmp_path, min_p=0.3)

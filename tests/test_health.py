"""Health-aware routing's state machine (etr_hub/backends/health.py) with an injected clock, and its
options' bad input. The pool, the router and GET /health with a real remote server: test_runtime.py."""

from __future__ import annotations

import math

import pytest

from etr_hub.backends.health import ExpertHealth, HealthBook, HealthPolicy
from etr_hub.errors import EtrHubError
from tests.helpers import invoke

POLICY = HealthPolicy(failures_before_cooldown=3, cooldown_s=30.0)

COOLED = [(0, "fail"), (1, "fail"), (2, "fail")]
# each step: (time, event) with event "fail", "ok", "probe-ok" or "probe-fail"; then what is expected at the end
CASES = {
    "two failures stay routable": ([(0, "fail"), (1, "fail")], 5, True, False, 2),
    "three in a row cool down": ([(0, "fail"), (1, "fail"), (2, "fail")], 5, False, False, 3),
    "a success resets the count": ([(0, "fail"), (1, "fail"), (2, "ok"), (3, "fail")], 5, True, False, 1),
    "cool-down over: probe due, still out": ([(0, "fail"), (1, "fail"), (2, "fail")], 32, False, True, 3),
    "probe answers: back in": ([(0, "fail"), (1, "fail"), (2, "fail"), (32, "probe-ok")], 33, True, False, 2),
    "on probation one failure cools down": (
        [(0, "fail"), (1, "fail"), (2, "fail"), (32, "probe-ok"), (40, "fail")],
        41,
        False,
        False,
        3,
    ),
    "probe fails: another cool-down": (
        [(0, "fail"), (1, "fail"), (2, "fail"), (32, "probe-fail")],
        61,
        False,
        False,
        3,
    ),
    "second cool-down ends": ([(0, "fail"), (1, "fail"), (2, "fail"), (32, "probe-fail")], 62, False, True, 3),
}


@pytest.mark.parametrize("steps, now, available, due, failures", CASES.values(), ids=CASES.keys())
def test_state_machine(steps, now, available, due, failures):
    health = ExpertHealth(POLICY)
    for t, event in steps:
        if event == "fail":
            health.record_failure(f"refused at {t}", t)
        elif event == "ok":
            health.record_success()
        else:
            health.record_probe(event == "probe-ok", f"probe failed at {t}", t)
    assert health.available(now) is available
    assert health.probe_due(now) is due
    assert health.failures == failures
    report = health.report(now)
    assert report["state"] == ("ok" if available else "cooling_down")
    if not available:
        assert report["seconds_left"] == max(0.0, round(health.cooling_until - now, 1))
        assert report["reason"] == health.reason and "at" in health.reason


def test_cool_down_seconds_left_counts_down():
    health = ExpertHealth(HealthPolicy(failures_before_cooldown=1, cooldown_s=10))
    health.record_failure("HTTP 503", 100.0)
    assert [health.seconds_left(t) for t in (100.0, 104.0, 110.0, 120.0)] == [10.0, 6.0, 0.0, 0.0]
    assert health.message("far") == "expert 'far' is cooling down after 1 failure(s) in a row: HTTP 503"


def test_book_tracks_only_named_experts():
    book = HealthBook(HealthPolicy(failures_before_cooldown=1), ["far"])
    book.failure("local-one", "boom", 0)  # not tracked: ignored
    book.failure("far", "refused", 0)
    assert book.cooling(1) == {"far": "expert 'far' is cooling down after 1 failure(s) in a row: refused"}
    assert book.due(1) == [] and book.due(30) == ["far"]
    book.probe_result("far", True, "", 30)
    assert book.cooling(30) == {} and book.report(30) == {"far": {"state": "ok", "failures": 0}}


@pytest.mark.parametrize(
    "n, s, words",
    [(0, 30.0, "failures_before_cooldown"), (3, 0.0, "cooldown_s"), (3, math.inf, "cooldown_s"), (3, -1, "cooldown_s")],
)
def test_bad_policy_is_one_clear_error(n, s, words):
    with pytest.raises(EtrHubError, match=words):
        HealthPolicy(n, s).check()


@pytest.mark.parametrize(
    "args, flag",
    [(["--failures-before-cooldown", "0"], "--failures-before-cooldown"), (["--cooldown-s", "0"], "--cooldown-s")],
)
def test_serve_refuses_a_bad_policy_before_loading(tmp_path, monkeypatch, args, flag):
    monkeypatch.setenv("ETR_HUB_HOME", str(tmp_path / "home"))  # no registry: refused before it is needed
    proc = invoke("serve", *args)
    assert proc.returncode == 1, proc.stderr
    assert flag in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr

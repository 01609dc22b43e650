"""`etr-hub query-set build` end to end on tiny models: selection, provenance, τ table, caches, bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import init_world as init
from tests.helpers import invoke, run_cli, write_jsonl
from tests.tiny_models import domain_rows, make_tiny_llama


def build(world, name: str, *extra: str) -> subprocess.CompletedProcess:
    return invoke(
        "query-set", "build", name, "--expert", str(world[f"expert:{name}"]), "--data", str(world["data"]), *extra
    )


def test_build_selects_the_experts_domain_and_records_provenance(world):
    from etr_hub.registry import Registry

    init(world)
    r = build(world, "astronomy", "--tau", "8", "--size", "15", "--seed", "3", "--label", "astronomy", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # data only on stdout
    assert out["size"] == 15 and out["rule"] == "paper" and out["tau"] == 8
    # the fine-tuned expert is better on its own domain, so the selection is (mostly) its domain
    assert out["purity"] == 1.0
    assert out["in_domain_gap"] > out["out_of_domain_gap"] + 1
    passing = [row["passing"] for row in sorted(out["tau_table"], key=lambda row: row["tau"])]
    assert passing == sorted(passing, reverse=True) and passing[0] <= 60  # monotone in τ
    assert set(out["loss_gap"]["quantiles"]) == {"p10", "p25", "p50", "p75", "p90"}

    reg = Registry.open()
    qs = reg.latest_query_set("astronomy", reg.require_meta().fingerprint)
    prov = qs.provenance
    assert prov["tau"] == 8 and prov["seed"] == 3 and prov["size"] == 15
    assert prov["source"]["sha256"] == out["dataset_sha256"] and prov["source"]["n_pairs"] == 60
    rows = [json.loads(line) for line in reg.abspath(qs.store_path).read_text().splitlines()]
    assert len(rows) == 15 and all(row["gap"] > 8 for row in rows)
    assert all(abs(row["loss_meta"] - row["loss_expert"] - row["gap"]) < 1e-3 for row in rows)

    # same seed, same selection; another seed, (very likely) another one
    again = json.loads(build(world, "astronomy", "--tau", "8", "--size", "15", "--seed", "3", "--json").stdout)
    other = json.loads(build(world, "astronomy", "--tau", "8", "--size", "15", "--seed", "4", "--json").stdout)
    assert again["sha256"] == out["sha256"] and other["sha256"] != out["sha256"]


def test_second_build_reuses_cached_meta_losses(world, tmp_path):
    init(world)
    assert build(world, "astronomy", "--json").returncode == 0
    # a second expert that does not need the meta model's weights, and a meta model that cannot
    # load any more: the build can only succeed if the meta losses come from the cache
    standalone = make_tiny_llama(tmp_path / "standalone", seed=3)
    meta_weights = world["meta"] / "model.safetensors"
    saved = meta_weights.read_bytes()
    meta_weights.write_bytes(b"broken")
    try:
        r = invoke(
            "query-set",
            "build",
            "standalone",
            "--expert",
            str(standalone),
            "--data",
            str(world["data"]),
            "--tau",
            "-1e9",
            "--json",
        )
        other_data = write_jsonl(tmp_path / "other.jsonl", domain_rows("law", 5, seed=99))
        uncached = invoke(
            "query-set", "build", "standalone", "--expert", str(standalone), "--data", str(other_data), "--tau", "-1e9"
        )
    finally:
        meta_weights.write_bytes(saved)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["size"] == 60
    assert (
        uncached.returncode != 0 and "could not load meta model" in uncached.stderr
    )  # the control: a new dataset needs the meta


def test_versus_and_top_select_expertise_over_a_shared_style(world):
    init(world)
    plain = json.loads(build(world, "astronomy", "--size", "10", "--label", "astronomy", "--json").stdout)
    versus = build(
        world,
        "astronomy",
        "--size",
        "10",
        "--label",
        "astronomy",
        "--pick",
        "top",
        "--versus",
        str(world["expert:law"]),
        "--versus",
        str(world["expert:cooking"]),
        "--json",
    )
    assert versus.returncode == 0, versus.stderr
    out = json.loads(versus.stdout)
    assert out["purity"] == 1.0 and out["purity"] >= plain["purity"]
    # provenance names the versus models by folder, never by the builder's absolute path
    law, cooking = world["expert:law"], world["expert:cooking"]
    assert f":{Path(law).name}]" in out["selection_rule"] and f":{Path(cooking).name}]" in out["selection_rule"]
    assert str(law) not in out["selection_rule"] and str(cooking) not in out["selection_rule"]


def test_labelled_route_through_the_console_script(world):
    init(world)
    r = run_cli(
        "query-set",
        "build",
        "law",
        "--expert",
        str(world["expert:law"]),
        "--data",
        str(world["data"]),
        "--rule",
        "labelled",
        "--label",
        "law",
        "--size",
        "12",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["size"] == 12 and out["purity"] == 1.0 and out["tau"] is None


def test_expert_without_chat_template_falls_back_with_a_warning(world, tmp_path):
    import shutil

    init(world)
    plain = make_tiny_llama(tmp_path / "plain", seed=5, chat_template=False)
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
    r = invoke("query-set", "build", "plain", "--expert", str(plain), "--data", str(world["data"]), "--tau", "-1000")
    assert r.returncode == 0, r.stderr
    assert "no chat template" in r.stderr


def test_over_long_rows_are_skipped_and_counted(world, tmp_path):
    """A 1 MB query once tried to allocate ~100 GB for attention; now rows whose query alone is over
    --max-tokens (at most the model's context: 512 for the tiny model) are skipped and listed."""
    from etr_hub.registry import Registry

    init(world)
    rows = world["data"].read_text().splitlines()
    long_q = {"query": "Tell me about the sky. " * 15, "response": "It is blue."}  # ~350 tokens
    huge_q = {"query": "word " * 200_000, "response": "A long question."}  # 1 MB
    for line, row in ((4, long_q), (9, huge_q), (12, long_q)):
        rows.insert(line - 1, json.dumps(row))
    data = write_jsonl(tmp_path / "with-long.jsonl", rows)
    for extra, skipped in (([], [9]), (["--max-tokens", "200"], [4, 9, 12])):
        r = invoke(
            "query-set",
            "build",
            "astronomy",
            "--expert",
            str(world["expert:astronomy"]),
            "--data",
            str(data),
            "--tau",
            "-1e9",
            "--size",
            "100",
            "--json",
            *extra,
        )
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["skipped_lines"] == skipped and out["n_pairs"] == 63 and out["size"] == 63 - len(skipped)
        limit = f"{out['max_tokens']:,}"
        assert f"skipped {len(skipped)} row(s) over {limit} tokens (lines {', '.join(map(str, skipped))})" in r.stderr
        reg = Registry.open()
        stored = reg.abspath(reg.latest_query_set("astronomy", reg.require_meta().fingerprint).store_path).read_text()
        assert huge_q["query"] not in stored and (long_q["query"] in stored) == (4 not in skipped)


def _bad_data(tmp: Path) -> dict[str, tuple[Path, str]]:
    return {
        "missing": (tmp / "nope.jsonl", "does not exist"),
        "not-jsonl": (
            write_jsonl(tmp / "bad.jsonl", ['{"query": "a", "response": "b"}', "this is not json"]),
            "bad.jsonl:2 is not JSON",
        ),
        "no-response": (write_jsonl(tmp / "noresp.jsonl", [{"query": "a"}]), "response"),
        "empty-row": (
            write_jsonl(tmp / "empty.jsonl", [{"query": "a", "response": "b"}, {"query": "", "response": "b"}]),
            "empty",
        ),
        "empty-file": (write_jsonl(tmp / "nothing.jsonl", []), "no rows"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "not-jsonl",
        "no-response",
        "empty-row",
        "empty-file",
        "unloadable-expert",
        "tau-selects-nothing",
        "no-init",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(world, tmp_path, case):
    from etr_hub.config import settings

    if case != "no-init":
        init(world)
    data, expert, expect, extra = world["data"], world["expert:astronomy"], "", []
    if case in _bad_data(tmp_path):
        data, expect = _bad_data(tmp_path)[case]
    elif case == "unloadable-expert":
        expert = tmp_path / "not-a-model"
        expert.mkdir()
        (expert / "config.json").write_text("{}")
        expect = "no *.safetensors weights"
    elif case == "tau-selects-nothing":
        extra, expect = ["--tau", "1e6"], "--tau"
    elif case == "no-init":
        expect = "etr-hub init"
    store_before = sorted(
        p.relative_to(settings().home) for p in settings().home.rglob("*") if "store" in p.parts and p.is_file()
    )
    r = invoke("query-set", "build", "astronomy", "--expert", str(expert), "--data", str(data), *extra)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert expect.lower() in lines[0].lower(), lines[0]
    store_after = sorted(
        p.relative_to(settings().home) for p in settings().home.rglob("*") if "store" in p.parts and p.is_file()
    )
    assert store_after == store_before
    if case != "no-init":
        from etr_hub.registry import Registry

        reg = Registry.open()
        assert reg.latest_query_set("astronomy", reg.require_meta().fingerprint) is None
    if case == "tau-selects-nothing":
        assert "passing at τ" in lines[0]  # the τ table travels with the error


def test_meta_model_changed_on_disk_is_refused(world, tmp_path):
    import shutil

    meta = shutil.copytree(world["meta"], tmp_path / "meta")
    assert invoke("init", "--meta", str(meta)).returncode == 0
    other = make_tiny_llama(tmp_path / "other", seed=9)
    shutil.copy(other / "model.safetensors", meta / "model.safetensors")
    r = build(world, "astronomy")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1 and "fingerprint" in errors[0]

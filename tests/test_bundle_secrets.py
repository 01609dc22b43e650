"""A bundle never takes the hub's secrets (issue #15, item 2).

A real OpenAI-compatible server on 127.0.0.1 records the Authorization header of every request;
the hub runs as the real `etr-hub` console script with secrets in its environment.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import invoke, run_cli
from tests.runtime_support import QUESTION, CompletionsServer, lively_llama, routing_states, row_winning_at
from tests.test_bundle_safety import assert_refused, list_json

HUB_SECRET = "hub-secret-3c9f"  # what ETR_HUB_API_KEY holds: the key clients use to call this hub
OTHER_SECRET = "other-secret-77aa"  # some unrelated credential in the hub's environment
ASTRO_KEY = "astro-key-1b2c"  # the key the operator means for the astronomy endpoint
ENV = {"ETR_HUB_API_KEY": HUB_SECRET, "OTHER_SECRET": OTHER_SECRET, "ASTRO_KEY": ASTRO_KEY}
ASK = QUESTION[0]["content"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.fingerprint import meta_fingerprint, output_embedding
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.models.refs import ModelRef
    from etr_hub.routing.math import max_row_norm

    path = lively_llama(tmp_path_factory.mktemp("secrets") / "meta")
    meta = load_causal_lm(ModelRef(kind="local", path=str(path)))
    prompt = routing_prompt_ids(meta.tokenizer, QUESTION)[0]
    row = row_winning_at(routing_states(meta.model, prompt)[len(prompt) - 1 :], 0)  # the expert wins at token 0
    return SimpleNamespace(
        path=path, fp=meta_fingerprint(meta.model), row=row, max_norm=max_row_norm(output_embedding(meta.model))
    )


@pytest.fixture
def hub(tiny, registry):
    registry.register_meta(
        reference={"kind": "local", "path": str(tiny.path)},
        display="tiny-meta",
        fingerprint=tiny.fp,
        hidden_size=32,
        vocab_size=272,
        max_row_norm=tiny.max_norm,
    )
    return registry


def remote_bundle(root: Path, tiny, expert: dict) -> Path:
    """A bundle whose expert is `expert` (a raw reference dict, written as an attacker would)."""
    from etr_hub.bundle.io import save_token
    from etr_hub.store import sha256_file

    root.mkdir(parents=True)
    save_token(root / "token.safetensors", tiny.row)
    manifest = {
        "schema_version": 1,
        "name": "astro",
        "version": "1.0.0",
        "license": "MIT",
        "provider": "tests",
        "expert": {"kind": "openai", "model": "tiny-remote", "timeout_s": 5, **expert},
        "meta": {"reference": "tiny", "hidden_size": 32, "vocab_size": 272, "fingerprint": tiny.fp},
        "token": {
            "file": "token.safetensors",
            "sha256": sha256_file(root / "token.safetensors"),
            "shape": [1, 32],
            "dtype": "float32",
        },
    }
    (root / "expert.json").write_text(json.dumps(manifest))
    return root


REFUSED = [
    ("hub-secret", {"api_key_env": "ETR_HUB_API_KEY"}, [], ["ETR_HUB_API_KEY", "the hub's own secrets"]),
    ("hub-secret-lowercase", {"api_key_env": "etr_hub_api_key"}, [], ["the hub's own secrets"]),
    (
        "hub-secret-allowed",
        {"api_key_env": "ETR_HUB_API_KEY"},
        ["--allow-env", "ETR_HUB_API_KEY"],
        ["the hub's own secrets"],
    ),
    ("unallowed-variable", {"api_key_env": "OTHER_SECRET"}, [], ["$OTHER_SECRET", "--allow-env OTHER_SECRET"]),
    (
        "another-variable-allowed",
        {"api_key_env": "OTHER_SECRET"},
        ["--allow-env", "ASTRO_KEY"],
        ["--allow-env OTHER_SECRET"],
    ),
    ("credentials-in-url", {"url": "http://user:hunter2@127.0.0.1:9/v1"}, [], ["carries credentials (user:password@)"]),
    ("user-only-in-url", {"url": "https://token-abc@example.invalid/v1"}, [], ["carries credentials"]),
]


@pytest.mark.parametrize("expert,args,words", [pytest.param(e, a, w, id=i) for i, e, a, w in REFUSED])
def test_add_refuses_a_bundle_that_reaches_for_a_secret(hub, tiny, tmp_path, hub_home, expert, args, words):
    bundle = remote_bundle(tmp_path / "bundle", tiny, {"url": "http://127.0.0.1:9/v1", **expert})
    res = invoke("expert", "add", str(bundle), *args)
    assert_refused(res, *words)
    assert "hunter2" not in res.stderr and "token-abc" not in res.stderr
    assert list_json() == []


def test_an_allowed_key_goes_to_its_endpoint_and_nothing_else_does(hub, tiny, tmp_path):
    with CompletionsServer(" the keyed expert speaks", api_key=ASTRO_KEY) as server:
        bundle = remote_bundle(tmp_path / "bundle", tiny, {"url": server.url, "api_key_env": "ASTRO_KEY"})
        res = run_cli("expert", "add", str(bundle), "--allow-env", "ASTRO_KEY")
        assert res.returncode == 0, res.stderr
        [row] = list_json()
        assert row["allowed_env"] == ["ASTRO_KEY"] and row["expert"]["api_key_env"] == "ASTRO_KEY"
        res = run_cli("chat", "--once", ASK, "--json", "--max-new-tokens", "8", env=ENV)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["expert"] == "astro" and "the keyed expert speaks" in out["text"] and not out["warnings"]
    assert server.authorizations and set(server.authorizations) == {f"Bearer {ASTRO_KEY}"}
    assert all(s not in res.stdout + res.stderr for s in (ASTRO_KEY, HUB_SECRET, OTHER_SECRET))


# Rows already in a registry (written before these checks, or edited in the database): the runtime
# still reads no variable the operator did not allow, and never sends URL credentials.
STORED = [
    ("hub-secret", {"api_key_env": "ETR_HUB_API_KEY"}, None, "no longer validates"),
    ("unallowed-variable", {"api_key_env": "OTHER_SECRET"}, None, "which the operator did not allow it to read"),
    ("allowed-another", {"api_key_env": "OTHER_SECRET"}, ["ASTRO_KEY"], "which the operator did not allow it to read"),
    ("credentials-in-url", {"url": "http://user:hunter2@{host}/v1"}, None, "no longer validates"),
]


@pytest.mark.parametrize("change,allowed,why", [pytest.param(c, a, w, id=i) for i, c, a, w in STORED])
def test_a_stored_row_gets_no_secret_it_was_not_given(hub, tiny, tmp_path, change, allowed, why):
    from etr_hub.registry.tables import Expert

    with CompletionsServer(" the remote expert speaks") as server:
        bundle = remote_bundle(tmp_path / "bundle", tiny, {"url": server.url})
        assert invoke("expert", "add", str(bundle)).returncode == 0
        host = server.url.split("//", 1)[1].rsplit("/v1", 1)[0]
        change = {k: v.format(host=host) for k, v in change.items()}
        with hub.session(write=True) as s:  # what an older registry (or a hand-edited row) holds
            row = s.get(Expert, hub.get_expert("astro").id)
            row.expert_ref = {**row.expert_ref, **change}
            row.manifest = {**row.manifest, "expert": {**row.manifest["expert"], **change}}
            row.allowed_env = allowed
        res = run_cli("chat", "--once", ASK, "--json", "--max-new-tokens", "8", env=ENV)
        shown = [
            invoke(*args).stdout
            for args in (
                ["expert", "list"],
                ["expert", "list", "--json"],
                ["expert", "show", "astro"],
                ["expert", "show", "astro", "--json"],
            )
        ]
    assert res.returncode == 0, res.stderr
    for auth in server.authorizations:  # whatever reached the server carried no credential at all
        assert auth is None, auth
    assert all(s not in res.stdout + res.stderr for s in (HUB_SECRET, OTHER_SECRET, "hunter2"))
    assert why in res.stderr or why in " ".join(json.loads(res.stdout)["warnings"]), res.stderr
    assert all("hunter2" not in text and "user:" not in text for text in shown), shown

"""Text from a manifest, the registry or a model reaches the terminal as TEXT: never rich markup,
never emoji codes, never control sequences (clear screen, window title, links). Through the real
console script; `--json` stays exact JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from etr_hub.registry.tables import Expert
from tests.helpers import etr_hub_cmd
from tests.runtime_support import QUESTION, CompletionsServer, add_expert, lively_llama, routing_states, row_winning_at

# (hostile text, how the terminal must show it)
HOSTILE = [
    ("[/]", "[/]"),
    ("[link=http://x]y[/link]", "[link=http://x]y[/link]"),
    ("[bold red]loud[/]", "[bold red]loud[/]"),
    (":warning: :smile:", ":warning: :smile:"),
    ("clear\x1b[2Jscreen", "clear\\x1b[2Jscreen"),
    ("title\x1b]0;owned\x07", "title\\x1b]0;owned\\x07"),
    ("csi\x9b31m", "csi\\x9b31m"),
    ("nul\x00byte", "nul\\x00byte"),
    ("back\rspace\x08del\x7f", "back\\x0dspace\\x08del\\x7f"),
    ("bidi\u202eevil", "bidi\\u202eevil"),
]
ON_POSTGRES = bool(os.environ.get("ETR_HUB_TEST_DATABASE_URL"))  # PostgreSQL text cannot hold NUL
CASES = [c for c in HOSTILE if not (ON_POSTGRES and "\x00" in c[0])]
CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # all but "\n"


def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """The console script with its output piped and no colour forced: any control code is the data's."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    return subprocess.run([*etr_hub_cmd(), *args], capture_output=True, text=True, env=env, timeout=120, input=input)


def inject(registry, name: str, text: str, *, ref: dict | None = None) -> None:
    """Put `text` in every free-text field of an expert's registry row and manifest (as a bundle
    added before any stricter validation, or another tool writing the registry, would)."""
    from sqlmodel import select

    with registry.session(write=True) as s:
        row = s.exec(select(Expert).where(Expert.name == name)).one()
        manifest = {**row.manifest, "description": text, "label": text, "provider": text, "license": text}
        if ref is not None:
            manifest["expert"] = ref
            row.expert_ref = ref
        row.manifest, row.description, row.label = manifest, text, text
        s.add(row)


def assert_clean(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stderr
    assert "internal error" not in res.stderr
    for stream in (res.stdout, res.stderr):
        assert not CONTROLS.search(stream), repr(stream)


def test_expert_list_and_show_print_manifest_text_literally(fake_meta, bundle_factory, registry):
    names = [f"e{i}" for i in range(len(CASES))]
    added = run("expert", "add", *[str(bundle_factory(n, seed=i)) for i, n in enumerate(names)])
    assert added.returncode == 0, added.stderr
    for name, (text, _) in zip(names, CASES):
        inject(registry, name, text, ref={"kind": "local", "path": f"/models/{text}"})

    listed = run("expert", "list")
    assert_clean(listed)
    for name, (text, shown) in zip(names, CASES):
        show = run("expert", "show", name)
        assert_clean(show)
        for field in ("description", "label", "provider", "license", "expert model"):
            assert re.search(rf"{field}\s+│ (local:/models/)?{re.escape(shown)} ", show.stdout), (
                field,
                text,
                show.stdout,
            )
        assert f"/models/{shown}" in listed.stdout and f" {shown} " in listed.stdout, (text, listed.stdout)
        # --json is exact JSON: the same text comes back, its controls escaped as JSON escapes
        data = json.loads(run("expert", "show", name, "--json").stdout)
        assert (data["description"], data["label"], data["expert"]["path"]) == (text, text, f"/models/{text}")
    as_json = run("expert", "list", "--json")
    assert_clean(as_json)
    assert [r["description"] for r in json.loads(as_json.stdout)] == [t for t, _ in CASES]


@pytest.mark.parametrize("selector, shown", [("\x1b[2Jgone", "\\x1b[2Jgone"), ("[/]", "[/]"), ("x\x9b2J", "x\\x9b2J")])
def test_an_error_quoting_a_name_prints_it_literally(fake_meta, selector, shown):
    res = run("expert", "show", selector)
    assert res.returncode == 3 and not CONTROLS.search(res.stderr), repr(res.stderr)
    assert res.stderr.startswith(f"error: no expert named '{shown}'"), res.stderr


REPLY = "look \x1b[2J\x1b]0;owned\x07 [/] [link=http://x]y[/link] \x9b31m :smile: done"


def test_chat_prints_model_text_and_expert_labels_literally(registry, tmp_path):
    """A remote expert that answers with escape sequences and markup, and a label with them:
    the answer, the hand-over marker, /experts and /route all print as text."""
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.models.refs import ModelRef
    from etr_hub.registry.meta import register_meta_model

    path = lively_llama(tmp_path / "meta")
    ref = ModelRef(kind="local", path=str(path))
    meta_row = register_meta_model(registry, ref)
    meta = load_causal_lm(ref)
    prompt = routing_prompt_ids(meta.tokenizer, QUESTION)[0]
    row = row_winning_at(routing_states(meta.model, prompt)[len(prompt) - 1 :], 0)
    with CompletionsServer(reply=REPLY) as server:
        add_expert(
            registry,
            "remote",
            row,
            ModelRef(kind="openai", url=server.url, model="tiny-remote"),
            fingerprint=meta_row.fingerprint,
            hidden=32,
        )
        inject(registry, "remote", "[/]\x1b]0;owned\x07")
        res = run("chat", "--max-new-tokens", "32", input=f"{QUESTION[0]['content']}\n/experts\n/route\n/exit\n")
        as_json = run("chat", "--once", QUESTION[0]["content"], "--json", "--max-new-tokens", "32")
    assert_clean(res)
    assert "look \\x1b[2J\\x1b]0;owned\\x07 [/] [link=http://x]y[/link] \\x9b31m :smile: done" in res.stdout, repr(
        res.stdout
    )
    assert "[→ remote, at token 0" in res.stderr and "[/]\\x1b]0;owned\\x07" in res.stderr, (
        res.stderr
    )  # the marker, /experts
    assert "route of the last answer" in res.stderr
    assert_clean(as_json)
    assert json.loads(as_json.stdout)["text"].endswith(REPLY)


def test_clean_keeps_text_and_escapes_controls():
    from etr_hub.cli.output import clean

    for text, shown in HOSTILE:
        assert clean(text) == shown
    assert clean("a\tb\nc", keep="\n\t") == "a\tb\nc" and clean("é ü 中文 🙂") == "é ü 中文 🙂"


def test_markup_in_a_bundles_own_manifest_is_printed_literally(fake_meta, bundle_factory):
    """The same through `expert add` itself: a provider's manifest with markup in its label and description."""
    bundle = bundle_factory("marked")
    manifest = json.loads((bundle / "expert.json").read_text())
    manifest.update(label="[/]", description="[link=http://evil.example]click[/link] [bold red]x[/]")
    (bundle / "expert.json").write_text(json.dumps(manifest))
    assert run("expert", "add", str(bundle)).returncode == 0
    for args in (("expert", "list"), ("expert", "show", "marked")):
        res = run(*args)
        assert_clean(res)
        assert "[/]" in res.stdout and "internal error" not in res.stderr
    assert "[link=http://evil.example]click[/link]" in run("expert", "show", "marked").stdout

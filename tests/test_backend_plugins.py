"""Backends are plug-ins: a package installed next to etr-hub with an entry point in the group
`etr_hub.backends` serves experts of its kind, found the way the built-in local, lora and
remote backends are. "Installed" here is what `pip install` leaves on sys.path: the package
and a *.dist-info folder whose entry_points.txt names the class. A bundle only names a kind:
one nobody installed is refused at `expert add`, and skipped with a reason at W_E assembly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from etr_hub.errors import BundleError
from etr_hub.models.chat import routing_prompt_ids
from etr_hub.models.loading import load_causal_lm
from etr_hub.models.refs import ModelRef
from etr_hub.registry.meta import register_meta_model
from tests.runtime_support import QUESTION, add_expert, lively_llama, routing_states, row_winning_at

ECHO_PACKAGE = '''
"""An out-of-tree expert backend: answers with its reference's model name."""

from etr_hub.backends.base import Chunk, ExpertBackend


class EchoBackend(ExpertBackend):
    def load(self):
        self.words = [" the", " echo", " expert", " answers", f" as {self.spec.ref.model}."]

    def generate(self, handoff, settings):
        for word in self.words[: settings.max_new_tokens]:
            yield Chunk(word)
'''
ECHO_REPLY = "the echo expert answers as echo-1."


def install_echo(site: Path) -> Path:
    """The package `etr-echo` as pip would leave it in `site`."""
    (site / "etr_echo").mkdir(parents=True)
    (site / "etr_echo" / "__init__.py").write_text(ECHO_PACKAGE)
    info = site / "etr_echo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: etr-echo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[etr_hub.backends]\necho = etr_echo:EchoBackend\n")
    return site


@pytest.fixture
def echo(tmp_path, monkeypatch, registry):
    """etr-echo installed in this process; a tiny meta model registered; an echo expert whose
    token wins at QUESTION's routing position."""
    site = install_echo(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    path = lively_llama(tmp_path / "meta")
    meta_row = register_meta_model(registry, ModelRef(kind="local", path=str(path)))
    meta = load_causal_lm(ModelRef(kind="local", path=str(path)), role="meta")
    prompt = routing_prompt_ids(meta.tokenizer, QUESTION)[0]
    row = row_winning_at(routing_states(meta.model, prompt)[-1:], 0)
    ref = ModelRef(kind="echo", model="echo-1")
    add_expert(registry, "echo-expert", row, ref, fingerprint=meta_row.fingerprint, hidden=32)
    yield SimpleNamespace(site=site, meta=meta, registry=registry, row=row, fingerprint=meta_row.fingerprint)
    sys.modules.pop("etr_echo", None)


def etr_hub(*args: str, site: Path | None = None) -> subprocess.CompletedProcess:
    """The real console script; `site` on its PYTHONPATH installs etr-echo for it."""
    exe = shutil.which("etr-hub", path=str(Path(sys.executable).parent))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=120)


def test_the_built_in_backends_are_plug_ins_too():
    """local, lora and remote come from etr-hub's own entry points; each reference kind finds its backend."""
    from etr_hub.backends import backend_kind
    from etr_hub.plugins import backend_entry_points

    assert {kind: entry.value for kind, entry in backend_entry_points().items()} == {
        "local": "etr_hub.backends.local:LocalBackend",
        "lora": "etr_hub.backends.lora:LoraBackend",
        "remote": "etr_hub.backends.remote:RemoteBackend",
    }
    refs = [
        ModelRef(kind="local", path="/m"),
        ModelRef(kind="hf", repo_id="org/name", revision="a" * 40),
        ModelRef(kind="gguf", path="/m.gguf"),
        ModelRef(kind="embedded", name="smollm2-135m-instruct"),
        ModelRef(kind="peft", path="/adapter"),
        ModelRef(kind="openai", url="http://127.0.0.1:1/v1", model="m"),
    ]
    assert [backend_kind(ref) for ref in refs] == ["local", "local", "local", "local", "lora", "remote"]


def test_the_hub_routes_to_an_installed_plug_in(echo):
    from etr_hub.runtime import Hub

    hub = Hub.open(echo.registry, meta=echo.meta)
    [expert] = hub.experts
    assert (expert.backend, expert.reference) == ("echo", "echo:echo-1")
    result = hub.chat(QUESTION, max_new_tokens=12, temperature=0)
    assert result.expert == "echo-expert" and [s.expert for s in result.route] == ["echo-expert"]
    assert result.text.strip() == ECHO_REPLY and result.finish_reason == "stop"
    backend = hub.pool.get("echo-expert")
    assert backend.kind == "echo" and type(backend).__module__ == "etr_echo"  # the installed package's code


def test_the_console_script_finds_the_plug_in_on_its_path(echo):
    chat = etr_hub("chat", "--once", QUESTION[0]["content"], "--json", "--max-new-tokens", "12", site=echo.site)
    assert chat.returncode == 0, chat.stderr
    answer = json.loads(chat.stdout)
    assert answer["expert"] == "echo-expert" and answer["text"].strip() == ECHO_REPLY


def test_without_the_plug_in_its_kind_is_unknown(echo, tmp_path):
    """Uninstalled: the registered expert is skipped with the reason and the meta model answers;
    its bundle is refused at `expert add` with the one-line error any unknown kind gets."""
    chat = etr_hub("chat", "--once", QUESTION[0]["content"], "--json", "--max-new-tokens", "4")
    assert chat.returncode == 0, chat.stderr
    assert json.loads(chat.stdout)["expert"] is None
    assert "skipped expert 'echo-expert': no backend serves echo experts — install the package" in chat.stderr

    echo.registry.export_expert("echo-expert", tmp_path / "bundle")
    add = etr_hub("expert", "add", str(tmp_path / "bundle"), "--replace")
    assert add.returncode == 2 and "Traceback" not in add.stderr
    [line] = add.stderr.strip().splitlines()
    assert line.startswith("error: ") and line.endswith(
        "field 'expert.kind': Input should be 'hf', 'local', 'gguf', 'peft', 'embedded' or 'openai' "
        "— correct the value in expert.json"
    )
    assert etr_hub("expert", "add", str(tmp_path / "bundle"), "--replace", site=echo.site).returncode == 0


def test_a_bundle_cannot_bring_its_own_backend(echo, tmp_path):
    """The code behind a kind is the operator's: a bundle shipping a plug-in package is refused."""
    bundle = echo.registry.export_expert("echo-expert", tmp_path / "bundle").root
    install_echo(bundle / "plugin")
    with pytest.raises(BundleError, match="is code"):
        echo.registry.add_expert(bundle, replace=True)

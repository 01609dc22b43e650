"""`etr-hub chat` and `etr-hub explain` through the real console script, on a tiny meta model
with one LoRA expert whose token is set to win on QUESTION."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from etr_hub.models.refs import ModelRef
from tests.helpers import etr_hub_cmd, run_cli
from tests.runtime_support import QUESTION, CompletionsServer, add_expert, meta_and_winning_row
from tests.tiny_models import make_tiny_lora

ASK = QUESTION[0]["content"]


@pytest.fixture
def hub_with_expert(registry, tmp_path):
    path, meta_row, row = meta_and_winning_row(registry, tmp_path)
    adapter = make_tiny_lora(path, tmp_path / "lora", seed=1)
    add_expert(
        registry,
        "astro",
        row,
        ModelRef(kind="peft", path="adapter"),
        fingerprint=meta_row.fingerprint,
        hidden=32,
        adapter=adapter,
    )
    return registry


def test_chat_once_json(hub_with_expert):
    res = run_cli("chat", "--once", ASK, "--json", "--max-new-tokens", "8")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)  # stdout is exactly one JSON object
    assert data["expert"] == "astro" and isinstance(data["text"], str) and data["text"]
    [route] = data["route"]
    assert route["expert"] == "astro" and route["token_index"] == 0 and route["probability"] > 0.99
    assert data["usage"]["completion_tokens"] <= 8


def test_piped_chat_holds_a_conversation(hub_with_expert):
    script = f"{ASK}\n/route\n\n/experts\nand something else\n/nonsense\n/reset\n/exit\nnever asked\n"
    res = run_cli("chat", "--max-new-tokens", "6", input=script)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert "[→ astro, at token 0" in res.stderr  # the hand-over marker
    assert "route of the last answer" in res.stderr and "experts on" in res.stderr
    assert "unknown command /nonsense" in res.stderr and "conversation reset" in res.stderr
    assert len(res.stdout.splitlines()) >= 2  # two answers (each ends its line); nothing after /exit


def test_explain_json(hub_with_expert):
    res = run_cli("explain", ASK, "--json", "--top", "3")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["winner"] == "astro" and len(data["words"]) == 3
    assert data["experts"][0]["name"] == "astro" and data["experts"][0]["probability"] > 0.99


@pytest.mark.parametrize(
    "args, message",
    [
        (["chat", "--once", "  "], "error: empty message"),
        (["explain", ""], "error: empty message"),
        (["chat", "--once", "caf\udce9"], "error: message 0 is not valid Unicode text"),  # undecodable bytes in argv
    ],
)
def test_bad_input_is_one_line(args, message):
    res = run_cli(*args)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].startswith(message), res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_binary_bytes_on_stdin_are_skipped_with_a_warning(hub_with_expert):
    """Invalid UTF-8 on a piped stdin once ended the session ('internal error: TypeError')."""
    script = b"\xff\xfe\x00binary\x89PNG\n" + ASK.encode() + b"\n" + "caf\u00e9?\n".encode()
    res = subprocess.run(
        [*etr_hub_cmd(), "chat", "--json", "--max-new-tokens", "4", "--temperature", "0"],
        input=script,
        capture_output=True,
        timeout=120,
        env=dict(os.environ),
    )
    err = res.stderr.decode()
    assert res.returncode == 0, err
    assert (
        "warning: input line 1 is not UTF-8 text (byte 0xff at column 1); skipped it" in err and "Traceback" not in err
    )
    out, answers, at = res.stdout.decode(), [], 0
    while out[at:].strip():  # one JSON object per answer (pretty-printed)
        obj, at = json.JSONDecoder().raw_decode(out, len(out) - len(out[at:].lstrip()))
        answers.append(obj)
    assert len(answers) == 2 and answers[0]["expert"] == "astro"  # the valid lines after it were answered


def test_temperature_zero_reproduces_exactly(hub_with_expert):
    runs = [
        run_cli("chat", "--once", "say something", "--json", "--max-new-tokens", "12", "--temperature", "0")
        for _ in range(2)
    ]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert json.loads(runs[0].stdout)["text"] == json.loads(runs[1].stdout)["text"]


def test_ctrl_c_stops_the_answer_and_keeps_the_session(registry, tmp_path):
    """SIGINT while an expert is answering (a remote one that takes its time) ends that answer
    only: the session goes on reading commands and exits cleanly."""
    _, meta_row, row = meta_and_winning_row(registry, tmp_path)
    with CompletionsServer(delay_s=30) as server:
        ref = ModelRef(kind="openai", url=server.url, model="tiny-remote", timeout_s=60)
        add_expert(registry, "slow", row, ref, fingerprint=meta_row.fingerprint, hidden=32)
        # as from a terminal: test runners (pytest-xdist workers) may ignore SIGINT, and children inherit that
        proc = subprocess.Popen(
            [*etr_hub_cmd(), "chat", "--max-new-tokens", "6"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            proc.stdin.write(ASK + "\n")
            proc.stdin.flush()
            deadline = time.monotonic() + 60
            while not server.requests:  # the answer has been handed to the expert, which is still thinking
                assert proc.poll() is None and time.monotonic() < deadline, "the chat never asked the expert"
                time.sleep(0.1)
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate("/experts\n/exit\n", timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 25  # not after the expert's 30 s
    assert "(answer stopped)" in err and "Traceback" not in err
    assert "experts on" in err  # the session read the next command

"""The serve pieces that need no model: the fair queue, the bind policy, request parsing."""

from __future__ import annotations

import pytest

from etr_hub.errors import EtrHubError
from etr_hub.server.config import ServerConfig, is_loopback
from etr_hub.server.worker import FairQueue, Job, NotServing, QueueFull


def _job(client: str, tag: str) -> Job:
    job = Job(call=lambda hub: iter(()), client=client, loop=None)  # never emits here
    job.tag = tag
    return job


def test_fair_queue_round_robin_by_client():
    q = FairQueue(capacity=10)
    for tag in ("a1", "a2", "a3", "a4"):  # a floods first
        q.put(_job("a", tag), lambda n: 1)
    q.put(_job("b", "b1"), lambda n: 1)
    q.put(_job("c", "c1"), lambda n: 1)
    q.put(_job("b", "b2"), lambda n: 1)
    order = [q.get().tag for _ in range(7)]
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]
    assert len(q) == 0


def test_fair_queue_bounded_and_discard_frees_a_place():
    q = FairQueue(capacity=2)
    first, second = _job("x", "1"), _job("y", "2")
    q.put(first, lambda n: 1)
    q.put(second, lambda n: 1)
    with pytest.raises(QueueFull) as full:
        q.put(_job("z", "3"), lambda n: 7 * n)
    assert full.value.retry_after == 14
    first.cancel()  # its client left while waiting
    assert len(q) == 1
    q.put(_job("z", "3"), lambda n: 1)
    assert [q.get().tag, q.get().tag] == ["2", "3"]
    assert q.close() == [] and q.get() is None
    with pytest.raises(NotServing):
        q.put(_job("z", "4"), lambda n: 1)


@pytest.mark.parametrize(
    "host,loopback",
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
        ("localhost.evil.com", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"host": "0.0.0.0"}, "without an API key"),
        ({"host": "10.0.0.5"}, "--insecure"),
        ({"port": 0}, "port 0"),
        ({"max_queue": 0}, "--max-queue"),
        ({"cors_origins": ("*",)}, "--cors-origin '*'"),
        ({"api_key": "   "}, "the API key is blank"),
        ({"api_key": "k3y\n"}, "surrounded by whitespace"),
        ({"max_prompt_tokens": 0}, "--max-prompt-tokens"),
    ],
)
def test_unsafe_configs_are_refused(kw, message):
    with pytest.raises(EtrHubError, match=message.replace("*", r"\*")):
        ServerConfig(**kw).check()


@pytest.mark.parametrize("kw", [{"host": "0.0.0.0", "api_key": "k"}, {"host": "0.0.0.0", "insecure": True}, {}])
def test_safe_configs_pass(kw):
    config = ServerConfig(**kw)
    assert config.check() is config  # no error, and check() hands back the same config for chaining


def test_api_key_is_not_in_repr():
    assert "s3cret" not in repr(ServerConfig(api_key="s3cret"))


def test_request_parsing():
    from etr_hub.server import protocol as p

    req = p.parse(
        p.ChatRequest,
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
                {"role": "user", "content": "hi"},
            ],
            "stop": "x",
            "max_completion_tokens": 9,
        },
    )
    assert req.chat_messages() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert req.settings(256, 512) == {
        "max_new_tokens": 9,
        "temperature": None,
        "top_p": None,
        "stop": ["x"],
        "seed": None,
        "ignore_eos": False,
        "repetition_penalty": None,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }  # None: the model's default
    with pytest.raises(p.ApiError, match="at most 512"):
        p.parse(
            p.ChatRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 600}
        ).settings(256, 512)
    assert p.parse(p.CompletionRequest, {"model": "m", "prompt": ["once"]}).prompt == "once"
    for bad in (
        {"model": "m", "prompt": ["a", "b"]},
        {"model": "m", "prompt": "a", "echo": True},
        {"model": "m", "prompt": "a", "stop": ["1", "2", "3", "4", "5"]},
    ):
        with pytest.raises(p.ApiError) as err:
            p.parse(p.CompletionRequest, bad)
        assert err.value.status == 400

"""The decoder's pieces: the sampler over [W_V; W_E]·h, KV-cached decoding, detokenizing, stop strings."""

from __future__ import annotations

import random

import pytest
import torch

from etr_hub.generation.plain import plain_tokens
from etr_hub.generation.sampling import Sampling, sample_index
from etr_hub.generation.text import Detokenizer, TextStream
from etr_hub.models.loading import load_causal_lm
from etr_hub.models.refs import ModelRef
from etr_hub.runtime.decode import RoutedDecoder, next_token_logits, token_probability
from tests.runtime_support import greedy_no_cache, lively_llama
from tests.tiny_models import make_tokenizer

NEG = float("-inf")


@pytest.mark.parametrize(
    "word, expert, blocked, expected",
    [
        ([1.0, 3.0, 2.0], [0.5, 2.5], None, 1),  # a word token wins
        ([1.0, 3.0, 2.0], [0.5, 4.0], None, 4),  # expert 1 wins: index V + 1
        ([1.0, 3.0, 2.0], [5.0, 4.0], [True, False], 4),  # expert 0 failed: the next best is expert 1
        ([1.0, 3.0, 2.0], [5.0, 4.0], [True, True], 1),  # all experts failed: the best word
        ([1.0, 3.0, 2.0], [], None, 1),  # no experts registered
    ],
)
def test_greedy_choice_over_words_and_experts(word, expert, blocked, expected):
    logits = next_token_logits(
        torch.tensor([word]),
        torch.tensor([expert]) if expert else None,
        torch.tensor(blocked) if blocked is not None else None,
    )
    assert logits.shape == (len(word) + len(expert),)
    assert sample_index(logits) == expected


@pytest.mark.parametrize(
    "expert, min_p, expected",
    [
        ([4.0, 0.0], 0.0, 3),  # expert 0 wins: V + 0
        ([4.0, 0.0], 0.5, 3),  # p(expert 0) = e^4 / (e + e^3 + e^2 + e^4 + 1) = 0.64 >= 0.5
        ([4.0, 0.0], 0.7, 1),  # under min_p: masked, the top word wins
        ([4.0, 3.9], 0.5, 1),  # two close experts share the mass: neither reaches 0.5
        ([4.0, 3.9], 0.3, 3),
    ],
)
def test_min_p_keeps_the_meta_model_below_the_switch_probability(expert, min_p, expected):
    logits = next_token_logits(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([expert]), None, min_p)
    assert sample_index(logits) == expected


def test_token_probability_is_the_softmax():
    logits = torch.tensor([1.0, 2.0, 3.0, NEG])
    assert token_probability(logits, 2) == pytest.approx(float(torch.softmax(logits, -1)[2]))
    assert token_probability(logits, 3) == 0.0


def test_top_p_keeps_the_nucleus_only():
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0])  # p ≈ .72 .27 .005 .002
    gen = torch.Generator().manual_seed(0)
    picks = {sample_index(logits, temperature=1.0, top_p=0.5, generator=gen) for _ in range(200)}
    assert picks == {0}
    picks = {sample_index(logits, temperature=1.0, top_p=0.95, generator=gen) for _ in range(400)}
    assert picks == {0, 1}


def test_sampling_with_a_seed_repeats():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1))
    runs = [[Sampling.make(1.0, 1.0, seed=3).pick(logits) for _ in range(1)] for _ in range(2)]
    assert runs[0] == runs[1]
    s = Sampling.make(1.0, 1.0, seed=3)
    assert len({s.pick(logits) for _ in range(100)}) > 5  # it does sample


@pytest.mark.parametrize(
    "deltas, stops, shown, text",
    [
        (
            [("Hello", "meta"), (" wor", "meta"), ("ld", "x")],
            [],
            [("Hello", "meta"), (" wor", "meta"), ("ld", "x")],
            "Hello world",
        ),
        (
            [("abc", "meta"), ("STO", "meta"), ("P and more", "meta")],
            ["STOP"],
            [("abc", "meta")],
            "abc",
        ),  # across deltas
        (
            [("abS", "meta"), ("Tx", "meta")],
            ["STOP"],
            [("ab", "meta"), ("STx", "meta")],
            "abSTx",
        ),  # held back, then released
        ([("one ", "meta"), ("ST", "e1"), ("OP", "e1")], ["STOP"], [("one ", "meta")], "one "),  # across sources
        ([("a", "meta"), ("b", "e1")], ["zz"], [("a", "meta"), ("b", "e1")], "ab"),
    ],
)
def test_text_stream_applies_stop_strings(deltas, stops, shown, text):
    stream = TextStream(stops)
    pieces = [p for d in deltas for p in stream.push(*d)] + stream.finish()
    assert pieces == shown and stream.text == text
    assert "".join(p for p, _ in pieces) == text


def test_detokenizer_deltas_add_up_to_the_decoded_text():
    tok = make_tokenizer()
    rng = random.Random(0)
    texts = ["héllo wörld 世界 🙂 the end", "plain ascii text", "ñ" * 5]
    sequences = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    sequences += [[rng.randrange(3, len(tok)) for _ in range(40)] for _ in range(5)]  # arbitrary bytes too
    for ids in sequences:
        detok = Detokenizer(tok, tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
        text = "".join(detok.push(i) for i in ids) + detok.flush()
        assert text == tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = lively_llama(tmp_path_factory.mktemp("decode") / "m", seed=3)
    return load_causal_lm(ModelRef(kind="local", path=str(path)))


@pytest.mark.parametrize("n_experts", [0, 6, 1000])
def test_kv_cached_routed_decoding_equals_no_cache_greedy(model, n_experts):
    prompt = model.tokenizer("a short prompt", add_special_tokens=False)["input_ids"]
    reference = greedy_no_cache(model.model, prompt, 24, eos=set())
    w_e_t = (
        (torch.randn(32, n_experts, generator=torch.Generator().manual_seed(0)) * 1e-3) if n_experts else None
    )  # (C, N), never wins
    decoder = RoutedDecoder(model.model, w_e_t, Sampling(), route_window=None)
    decoder.start(prompt)
    routed = [decoder.next() for _ in range(24)]
    assert routed == reference
    assert (
        list(plain_tokens(model.model, prompt, max_new_tokens=24, sampling=Sampling(), eos_ids=frozenset()))
        == reference
    )


def test_routed_decoder_after_a_blocked_expert_continues_from_the_same_state(model):
    prompt = model.tokenizer("route me", add_special_tokens=False)["input_ids"]
    reference = greedy_no_cache(model.model, prompt, 6, eos=set())
    decoder = RoutedDecoder(model.model, torch.full((32, 2), 0.0), Sampling(), route_window=None)
    decoder.start(prompt)
    decoder.w_e_t = None  # first step: plain
    first = decoder.next()
    decoder.w_e_t = (
        decoder.runner.head.weight[reference[1]].reshape(32, 1).repeat(1, 2) * 100
    )  # (C, 2): experts win next
    decoder.n_experts = 2
    vocab = decoder.vocab
    assert decoder.next() >= vocab
    decoder.block(0)
    assert decoder.next() == vocab + 1  # the same state, expert 0 masked
    decoder.block(1)
    assert [first, decoder.next()] == reference[:2]  # all blocked: the meta model's own token


def test_the_operators_bias_moves_the_routing_decision(model):
    """The same state and W_E: a bias on expert 1 makes it win, a negative one on both hands back."""
    prompt = model.tokenizer("route me", add_special_tokens=False)["input_ids"]
    reference = greedy_no_cache(model.model, prompt, 1, eos=set())

    def first(bias):
        w_e_t = torch.zeros(32, 2)  # (C, N): logit 0 for both, below the top word here
        decoder = RoutedDecoder(model.model, w_e_t, Sampling(), bias=torch.tensor(bias))
        decoder.start(prompt)
        return decoder.next(), decoder.vocab

    index, vocab = first([0.0, 0.0])
    assert index == reference[0]  # no bias: the meta model's own token
    index, vocab = first([0.0, 1e4])
    assert index == vocab + 1  # expert 1, by its bias alone
    index, _ = first([-1e4, -1e4])
    assert index == reference[0]

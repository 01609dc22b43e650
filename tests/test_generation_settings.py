"""Generation settings: the repetition/presence/frequency penalties (exact formulas, on the meta model
and on an expert continuing its answer), tiny temperatures, seeds, and the model's recommended
defaults. Tiny random models; the references re-encode the whole sequence every step."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from etr_hub.errors import EtrHubError
from etr_hub.generation.modelinfo import SamplingDefaults, eos_ids, sampling_defaults
from etr_hub.generation.sampling import Sampling, penalize, sample_index
from etr_hub.generation.text import Detokenizer
from etr_hub.models.chat import routing_prompt_ids
from etr_hub.models.default_meta import GGUF_SHA256, RECOMMENDED_SAMPLING, SOURCE_FILE
from etr_hub.models.fingerprint import meta_fingerprint
from etr_hub.models.loading import load_causal_lm
from etr_hub.models.refs import ModelRef
from etr_hub.runtime import Hub
from tests.runtime_support import QUESTION, add_expert, lively_llama, routing_states, row_winning_at

LOGITS = [3.0, 2.0, -1.0, 0.5, -0.2]
ANSWER = [0, 2, 2]  # token 0 once, token 2 twice

PENALTIES = [
    # (repetition, presence, frequency) -> logits by hand, and the greedy pick
    ((1.0, 0.0, 0.0), [3.0, 2.0, -1.0, 0.5, -0.2], 0),
    ((2.0, 0.0, 0.0), [1.5, 2.0, -2.0, 0.5, -0.2], 1),  # 3 / 2 < 2: the repeated token loses
    ((1.0, 0.6, 0.0), [2.4, 2.0, -1.6, 0.5, -0.2], 0),
    ((1.0, 0.0, 1.5), [1.5, 2.0, -4.0, 0.5, -0.2], 1),  # OpenAI's: minus frequency × count
    ((1.5, 0.5, 0.25), [1.25, 2.0, -2.5, 0.5, -0.2], 1),  # 3/1.5 - .5 - .25; -1*1.5 - .5 - .5
]


@pytest.mark.parametrize("penalties,expected,pick", PENALTIES)
def test_penalties_change_the_argmax_as_the_formula_says(penalties, expected, pick):
    rep, presence, frequency = penalties
    logits = torch.tensor(LOGITS)
    counts = Sampling.make(answer=ANSWER).counts
    assert penalize(logits, counts, rep, presence, frequency).tolist() == pytest.approx(expected)
    assert logits.tolist() == pytest.approx(
        LOGITS
    )  # the caller's logits (eq. 1, for route probabilities) are untouched
    sampling = Sampling.make(
        0.0, repetition_penalty=rep, presence_penalty=presence, frequency_penalty=frequency, answer=ANSWER
    )
    assert sampling.pick(logits) == pick
    if presence == frequency == 0.0:  # the same definition as transformers' processor
        ours = penalize(logits, counts, rep)
        theirs = RepetitionPenaltyLogitsProcessor(rep)(torch.tensor([ANSWER]), logits.clone()[None])[0]
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-30, 1e-6])
def test_tiny_temperatures_decode_greedily(temperature):
    logits = torch.tensor([1.0, 4.0, 3.999, float("nan"), -float("inf")])
    gen = torch.Generator().manual_seed(0)
    assert {sample_index(logits, temperature=temperature, top_p=0.9, generator=gen) for _ in range(20)} == {1}


@pytest.mark.parametrize(
    "logits", [[float("nan")] * 4, [float("inf"), 1.0, float("inf"), 0.0], [-float("inf"), 2.0, -float("inf"), 1.0]]
)
def test_non_finite_logits_never_crash_sampling(logits):
    index = sample_index(torch.tensor(logits), temperature=0.7, top_p=0.9, generator=torch.Generator().manual_seed(0))
    numbers = [i for i, x in enumerate(logits) if x == x]  # NaN logits never win, unless all are NaN
    assert index in numbers or (not numbers and 0 <= index < len(logits))


# -- on a tiny hub ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    meta_path = lively_llama(root / "meta", seed=0)
    expert_path = lively_llama(root / "expert", seed=3)
    meta = load_causal_lm(ModelRef(kind="local", path=str(meta_path)), role="meta")
    expert = load_causal_lm(ModelRef(kind="local", path=str(expert_path)))
    return SimpleNamespace(
        root=root,
        meta_path=meta_path,
        meta=meta,
        expert_path=expert_path,
        expert=expert,
        fp=meta_fingerprint(meta.model),
        eos=set(eos_ids(meta.model, meta.tokenizer)),
    )


@pytest.fixture
def hub(models, registry):
    registry.register_meta(
        reference={"kind": "local", "path": str(models.meta_path)},
        display="tiny-meta",
        fingerprint=models.fp,
        hidden_size=32,
        vocab_size=272,
    )
    return lambda **kw: Hub.open(registry, meta=models.meta, **kw)


@torch.no_grad()
def penalized_greedy(
    model, ids: list[int], answer: list[int], max_new: int, eos: set[int], penalty: float
) -> list[int]:
    """Reference: re-encode everything each step; transformers' processor over the answer's tokens."""
    out = []
    for _ in range(max_new):
        logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1:]  # (1, V)
        if answer + out:
            logits = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([answer + out]), logits)
        out.append(int(logits.argmax()))
        if out[-1] in eos:
            break
    return out


def text(tokenizer, ids, context=()) -> str:
    """`ids` as the hub streams them (random byte-level tokens may end mid-character)."""
    detok = Detokenizer(tokenizer, list(context)[-4:])
    return "".join(detok.push(i) for i in ids) + detok.flush()


def test_meta_model_penalty_equals_the_reference(models, hub):
    prompt = routing_prompt_ids(models.meta.tokenizer, QUESTION)[0]
    expected = penalized_greedy(models.meta.model, prompt, [], 24, models.eos, 1.8)
    plain = penalized_greedy(models.meta.model, prompt, [], 24, models.eos, 1.0)
    assert expected != plain  # the penalty matters for this model (the test is not vacuous)
    result = hub().chat(QUESTION, max_new_tokens=24, temperature=0, repetition_penalty=1.8)
    assert result.text == text(models.meta.tokenizer, [t for t in expected if t not in models.eos], prompt)


def test_expert_continuation_counts_the_meta_models_partial_answer(models, hub, registry):
    """The meta model writes K tokens, its expert token wins, the expert continues: the expert's
    penalty counts those K tokens too (the route's answer so far), not only its own."""
    k, penalty = 8, 1.8
    tok = models.meta.tokenizer
    prompt = routing_prompt_ids(tok, QUESTION)[0]
    partial = penalized_greedy(models.meta.model, prompt, [], k, set(), penalty)
    states = routing_states(models.meta.model, prompt + partial)[len(prompt) - 1 :]
    add_expert(
        registry,
        "astro",
        row_winning_at(states, k),
        ModelRef(kind="local", path=str(models.expert_path)),
        fingerprint=models.fp,
        hidden=32,
    )
    result = hub(route_window=None).chat(QUESTION, max_new_tokens=20, temperature=0, repetition_penalty=penalty)
    assert [(s.expert, s.token_index) for s in result.route] == [("astro", k)]
    expected = penalized_greedy(models.expert.model, prompt + partial, partial, 20 - k, models.eos, penalty)
    own_only = penalized_greedy(models.expert.model, prompt + partial, [], 20 - k, models.eos, penalty)
    assert expected != own_only  # counting the partial answer makes a difference here
    assert result.text == text(tok, partial, prompt) + text(
        tok, [t for t in expected if t not in models.eos], prompt + partial
    )


def test_seeded_sampling_repeats_and_seeds_differ(hub):
    h = hub()
    runs = {
        seed: h.chat(QUESTION, max_new_tokens=16, temperature=1.0, top_p=0.95, repetition_penalty=1.3, seed=seed).text
        for seed in range(4)
    }
    assert (
        h.chat(QUESTION, max_new_tokens=16, temperature=1.0, top_p=0.95, repetition_penalty=1.3, seed=2).text == runs[2]
    )
    assert len(set(runs.values())) > 1  # it does sample


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"seed": 2**70}, "seed 1180591620717411303424 is out of range"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ({"temperature": float("nan")}, "temperature must be ≥ 0"),
        ({"presence_penalty": 3.0}, "presence_penalty must be in [-2, 2]"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens must be at least 1"),
    ],
)
def test_out_of_range_settings_are_one_line_errors(hub, kw, message):
    with pytest.raises(EtrHubError) as err:
        hub().chat(QUESTION, **kw)
    assert message in str(err.value)


def test_errors_name_parameters_and_the_cli_spells_them_as_flags(hub):
    """The library speaks to Python callers (max_new_tokens); the CLI maps that to its flags."""
    from etr_hub.cli.flags import as_flags

    long_system = {"role": "system", "content": "answer briefly and well " * 40}
    with pytest.raises(EtrHubError) as err:
        hub().chat([long_system, *QUESTION], max_prompt_tokens=20)
    assert "lower `max_new_tokens` or raise `max_prompt_tokens`" in str(err.value) and "--" not in str(err.value)
    assert "lower --max-new-tokens or raise --max-prompt-tokens" in as_flags(str(err.value))
    assert as_flags("expert 'top_p' failed") == "expert 'top_p' failed"  # only a name in backticks is a parameter


def test_max_prompt_tokens_keeps_the_conversation_within_it(hub):
    h = hub()
    history = [
        {"role": "user", "content": "an old question " * 10},
        {"role": "assistant", "content": "an old answer " * 10},
    ]
    full = h.prompt_tokens([*history, *QUESTION])
    result = h.chat([*history, *QUESTION], max_new_tokens=4, temperature=0, max_prompt_tokens=full - 10)
    assert result.prompt_tokens <= full - 10 and "did not fit the prompt limit of" in result.warnings[0]


# -- where the defaults come from ------------------------------------------------------------------------
DEFAULTS = [
    # (generation_config.json additions, embedded conversion marker, expected)
    ({}, False, SamplingDefaults()),
    ({"do_sample": True, "temperature": 0.6, "top_p": 0.95}, False, (0.6, 0.95, 1.0)),
    ({"repetition_penalty": 1.15}, False, (0.0, 1.0, 1.15)),  # greedy (no do_sample), with the penalty
    ({"temperature": 0.6}, False, SamplingDefaults()),  # transformers ignores temperature without do_sample
    ({}, True, tuple(RECOMMENDED_SAMPLING.values())),  # the embedded SmolLM2: its card's settings
    ({"do_sample": True, "temperature": 0.7}, True, (0.7, 1.0, 1.0)),  # the model's own config wins
]


@pytest.mark.parametrize("config,embedded,expected", DEFAULTS)
def test_sampling_defaults_come_from_the_model(models, tmp_path, config, embedded, expected):
    import shutil

    path = shutil.copytree(models.meta_path, tmp_path / "model")
    gen_file = path / "generation_config.json"
    gen_file.write_text(json.dumps({**json.loads(gen_file.read_text()), **config}))
    if embedded:
        (path / SOURCE_FILE).write_text(json.dumps({"gguf_sha256": GGUF_SHA256}))
    got = sampling_defaults(load_causal_lm(ModelRef(kind="local", path=str(path))).model)
    want = expected if isinstance(expected, SamplingDefaults) else SamplingDefaults(*expected)
    assert (got.temperature, got.top_p, got.repetition_penalty) == (
        want.temperature,
        want.top_p,
        want.repetition_penalty,
    )


def sampling_meta(models, registry, tmp_path):
    """The tiny meta model with a generation_config that recommends sampling and a repetition penalty."""
    import shutil

    path = shutil.copytree(models.meta_path, tmp_path / "model")
    gen_file = path / "generation_config.json"
    gen_file.write_text(
        json.dumps(
            {
                **json.loads(gen_file.read_text()),
                "do_sample": True,
                "temperature": 0.9,
                "top_p": 0.8,
                "repetition_penalty": 1.4,
            }
        )
    )
    meta = load_causal_lm(ModelRef(kind="local", path=str(path)), role="meta")
    registry.register_meta(
        reference={"kind": "local", "path": str(path)},
        display="tiny",
        fingerprint=models.fp,
        hidden_size=32,
        vocab_size=272,
    )
    return meta


def test_hub_uses_the_models_defaults_when_none_are_given(models, registry, tmp_path):
    h = Hub.open(registry, meta=sampling_meta(models, registry, tmp_path))
    assert (h.sampling.temperature, h.sampling.top_p, h.sampling.repetition_penalty) == (0.9, 0.8, 1.4)
    default = h.chat(QUESTION, max_new_tokens=16, seed=11).text
    assert (
        default == h.chat(QUESTION, max_new_tokens=16, seed=11, temperature=0.9, top_p=0.8, repetition_penalty=1.4).text
    )
    assert default != h.chat(QUESTION, max_new_tokens=16, seed=11, temperature=0).text


def test_an_experts_declared_decoding_applies_unless_the_request_sets_its_own(models, registry, tmp_path):
    """A skill bundle declares greedy decoding (manifest `sampling`): under the meta model's sampling defaults
    its answer is the greedy one whatever the seed; a request's own temperature still wins."""
    meta = sampling_meta(models, registry, tmp_path)
    prompt = routing_prompt_ids(meta.tokenizer, QUESTION)[0]
    row = row_winning_at(routing_states(meta.model, prompt)[len(prompt) - 1 :], 0)
    expert = ModelRef(kind="local", path=str(models.expert_path))
    add_expert(registry, "skill", row, expert, fingerprint=models.fp, hidden=32, sampling={"temperature": 0.0})
    h = Hub.open(registry, meta=meta)
    default = {seed: h.chat(QUESTION, max_new_tokens=16, seed=seed) for seed in (1, 2, 3)}
    assert all([(s.expert, s.token_index) for s in r.route] == [("skill", 0)] for r in default.values())
    assert len({r.text for r in default.values()}) == 1  # greedy: the seed does not matter
    # the bundle set no repetition penalty: the meta model's (1.4) still applies to the expert
    assert default[1].text == h.chat(QUESTION, max_new_tokens=16, temperature=0, repetition_penalty=1.4).text
    assert default[1].text != h.chat(QUESTION, max_new_tokens=16, temperature=0, repetition_penalty=1.0).text
    own = {h.chat(QUESTION, max_new_tokens=16, seed=seed, temperature=0.9).text for seed in (1, 2, 3)}
    assert len(own) > 1  # the request's temperature wins over the bundle's


@pytest.mark.parametrize(
    "field,value", [("temperature", -0.1), ("temperature", float("nan")), ("top_p", 0.0), ("repetition_penalty", 0.0)]
)
def test_a_bundles_declared_decoding_is_validated(field, value):
    from pydantic import ValidationError

    from etr_hub.bundle.manifest import Sampling

    with pytest.raises(ValidationError):
        Sampling(**{field: value})
    assert Sampling(temperature=0.0).declared() == {"temperature": 0.0}

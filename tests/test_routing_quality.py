"""Routing quality on the real embedded meta model (slow): trained one by one with the default
settings, each expert token wins on held-out questions of its subject and stays silent on small talk."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

from tests.helpers import invoke, write_jsonl

MMLU = Path(__file__).resolve().parents[2] / "shared" / "data" / "mmlu" / "test"
SUBJECTS = ("astronomy", "international_law", "human_sexuality")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MMLU.is_dir(), reason="needs ../shared/data/mmlu")]


def questions(subject: str) -> list[str]:
    with open(MMLU / f"{subject}_test.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    random.Random(subject).shuffle(rows)
    return [r[0] + "\n" + "\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", r[1:5])) for r in rows]


def test_tokens_trained_one_by_one_route_held_out_questions(tmp_path):
    from etr_hub.config import settings
    from etr_hub.models.chat import routing_prompt_ids
    from etr_hub.models.fingerprint import output_embedding
    from etr_hub.models.loading import load_causal_lm
    from etr_hub.models.refs import ModelRef
    from etr_hub.registry import Registry
    from etr_hub.routing import routing_logits
    from etr_hub.session import read_general_prompts
    from tests.tiny_models import make_tiny_lora

    assert invoke("init").returncode == 0
    meta_dir = settings().models_dir / "smollm2-135m-instruct"
    adapter = make_tiny_lora(
        meta_dir, tmp_path / "adapter", r=2
    )  # any expert will do: the labelled route picks by subject
    held_out: dict[str, list[str]] = {}
    for subject in SUBJECTS:
        qs = questions(subject)
        rows = [{"query": q, "response": "I can help with that.", "label": subject} for q in qs[:30]]
        held_out[subject] = qs[30:42]
        data = write_jsonl(tmp_path / f"{subject}.jsonl", rows)
        r = invoke(
            "query-set",
            "build",
            subject,
            "--expert",
            str(adapter),
            "--data",
            str(data),
            "--rule",
            "labelled",
            "--label",
            subject,
        )
        assert r.returncode == 0, r.stderr
        r = invoke("train-token", subject, "--json")  # the defaults: lr 5e-4, weight decay 1.0, until a plateau
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["train_routing_accuracy"] >= 0.9

    reg = Registry.open()
    from etr_hub.bundle import Manifest
    from etr_hub.bundle.io import read_token

    def row(name):
        e = reg.get_expert(name)
        path = reg.abspath(e.token_path)
        return read_token(path.parent, path, Manifest.model_validate(e.manifest)).float()

    w_e = torch.cat([row(s) for s in SUBJECTS])  # (3, C)
    meta = load_causal_lm(ModelRef.model_validate(reg.require_meta().reference), role="meta")
    w_v = output_embedding(meta.model)  # (V, C)

    def winners(texts: list[str]) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for text in texts:
                ids, _ = routing_prompt_ids(meta.tokenizer, [{"role": "user", "content": text}])
                h = meta.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][
                    :, -1
                ]  # (1, C)
                out.append(routing_logits(h.float(), w_v.float(), w_e).argmax(dim=-1))  # (1,)
        return torch.cat(out)  # (Q,)

    vocab = w_v.shape[0]
    for k, subject in enumerate(SUBJECTS):
        hit = (winners(held_out[subject]) == vocab + k).float().mean().item()
        assert hit >= 0.8, (subject, hit)  # beats every word token AND the other experts' tokens
    false_fire = (winners(read_general_prompts(split="eval")) >= vocab).float().mean().item()
    assert false_fire <= 0.1, false_fire

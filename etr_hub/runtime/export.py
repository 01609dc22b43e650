"""`etr-hub export meta OUT`: the meta model as a standard Hugging Face checkpoint with one added
token per enabled expert, so an existing engine (vLLM, SGLang, TGI, `transformers serve`) can run it.

The checkpoint's LM head is eq. 1's output matrix [W_V; W_E] as one (V + N, C) linear layer, so
the engine's next-token distribution at the routing position is exactly the hub's softmax over
words and experts. Expert k is the added token `<|expert:NAME|>` at id V + k; it is not marked
special, so engines keep it in the text they return (where the router reads it). Models that tie
their input and output embeddings are untied: the new input rows are never fed back (an expert
token hands the answer over), so they hold the mean input row. A tokenizer with fewer tokens than
the model has rows (spare rows, as Qwen's) is first padded with reserved tokens, so that expert k
lands on id V + k.

Next to the weights: the tokenizer with its chat template, the generation config (with the
sampling the hub recommends for this model) and `etr_hub_export.json`, which names each added
token's id, expert, version and token sha256 and the registry's meta fingerprint: a router
(`etr-hub serve --meta-url`) checks it against the registry at start. The checkpoint is a
snapshot: re-export when experts are added, removed, enabled, disabled or retrained.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from etr_hub.errors import EtrHubError
from etr_hub.models.fingerprint import output_embedding
from etr_hub.runtime.engine import EXPORT_FILE, EXPORT_FORMAT, read_export_manifest

__all__ = ["EXPORT_FILE", "ExportResult", "export_meta", "read_export_manifest"]

EXPORT_VERSION = 1


def expert_token_text(name: str) -> str:
    """The added token that stands for expert `name` in an exported checkpoint."""
    return f"<|expert:{name}|>"


def reserved_token_text(i: int) -> str:
    return f"<|etr-hub:reserved-{i}|>"


@dataclass
class ExportedToken:
    name: str
    version: str
    token: str  # the added token's text, e.g. <|expert:astronomy|>
    token_id: int
    token_sha256: str  # of the expert's token.safetensors in the store

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "token": self.token,
            "token_id": self.token_id,
            "token_sha256": self.token_sha256,
        }


@dataclass
class ExportResult:
    out: Path
    meta_model: str
    meta_fingerprint: str
    word_vocab_size: int  # V: expert k is token id V + k
    tokens: list[ExportedToken] = field(default_factory=list)
    reserved_tokens: int = 0  # tokens added to reach V (a tokenizer smaller than the model's vocabulary)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        """What `etr_hub_export.json` holds."""
        from etr_hub import __version__

        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "etr_hub_version": __version__,
            "meta_model": self.meta_model,
            "meta_fingerprint": self.meta_fingerprint,
            "word_vocab_size": self.word_vocab_size,
            "reserved_tokens": self.reserved_tokens,
            "experts": [t.to_json() for t in self.tokens],
        }

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), **self.manifest(), "skipped": [{"name": n, "reason": r} for n, r in self.skipped]}


# -- the math: small pure functions ---------------------------------------------------------------
def exported_head(w_v: torch.Tensor, w_e: torch.Tensor) -> torch.Tensor:
    """(V + N, C): eq. 1's output matrix [W_V; W_E] as one LM-head weight, in W_V's dtype."""
    return torch.cat([w_v, w_e.to(w_v.dtype)], dim=0)  # (V, C) + (N, C) -> (V + N, C)


def exported_input_embedding(w_in: torch.Tensor, n_new: int) -> torch.Tensor:
    """(V + N, C): the input embedding with N rows appended (the mean row: never fed back, any value works)."""
    fill = w_in.float().mean(dim=0, keepdim=True).to(w_in.dtype)  # (1, C)
    return torch.cat([w_in, fill.expand(n_new, -1)], dim=0)  # (V + N, C)


def exported_bias(bias: torch.Tensor | None, n_new: int) -> torch.Tensor | None:
    """(V + N,): an LM-head bias extended with zeros (expert logits are W_E h, no bias)."""
    if bias is None:
        return None
    return torch.cat([bias, bias.new_zeros(n_new)])  # (V,) -> (V + N,)


# -- the export --------------------------------------------------------------------------------------
def export_meta(
    out: Path | str, *, registry: Any = None, force: bool = False, status: Callable[[str], None] | None = None
) -> ExportResult:
    """Write the meta model with one added token per enabled expert to `out` (see the module doc).

    `out` must not exist or be an empty folder, unless `force` (then it is replaced). Nothing is
    half-written: the checkpoint is built in a temporary folder next to `out` and renamed into place."""
    from etr_hub.runtime.hub import Hub

    out = Path(out).expanduser().absolute()
    check_out(out, force)
    hub = Hub.open(registry, status=status)
    try:
        if not hub.experts:
            why = "; ".join(f"{n}: {r}" for n, r in hub.skipped)
            raise EtrHubError(
                "no enabled expert fits the meta model, so there is nothing to export"
                + (f" (skipped {why})" if why else ""),
                "add one with `etr-hub expert add PATH` or enable one with `etr-hub expert enable NAME`",
            )
        fingerprint = hub.registry.require_meta().fingerprint
        result = ExportResult(out, hub.meta_name, fingerprint, int(output_embedding(hub.meta.model).shape[0]))
        result.skipped = list(hub.skipped)
        tmp = _temp_dir(out)
        try:
            if status is not None:
                status(f"writing {out.name}")
            _write_checkpoint(hub, tmp, result)
            (tmp / EXPORT_FILE).write_text(json.dumps(result.manifest(), indent=2) + "\n")
            _move_into_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return result
    finally:
        hub.close()


def check_out(out: Path, force: bool) -> None:
    """OUT may be new or an empty folder; anything else only with `force`. Its parent must be writable."""
    if out.exists() and not out.is_dir():
        raise EtrHubError(f"{out} exists and is not a folder", "choose another OUT, or remove it")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise EtrHubError(f"{out} exists and is not empty", "choose another OUT, or pass `force` to replace it")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    writable = os.access(parent, os.W_OK | os.X_OK)
    why = "not a folder" if not parent.is_dir() else None if writable else "permission denied"
    if why:
        raise EtrHubError(f"cannot write to {parent} ({why})", "choose an OUT in a folder you can write")


def _temp_dir(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    except OSError as exc:
        raise EtrHubError(
            f"cannot write to {out.parent}: {exc.strerror or exc}", "choose an OUT in a folder you can write"
        ) from None


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished checkpoint to `out`; an existing `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "previous")
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old / "previous", out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_checkpoint(hub: Any, tmp: Path, result: ExportResult) -> None:
    """The model with [W_V; W_E] as its (untied) LM head, the tokenizer with the added tokens, the
    generation config with the hub's recommended sampling."""
    model, tokenizer = hub.meta.model, hub.meta.tokenizer
    v = result.word_vocab_size
    names = [e.name for e in hub.experts]
    result.reserved_tokens = _add_tokens(tokenizer, v, names)
    sha = {e.name: e.token_sha256 for e in hub.registry.list_experts(enabled_only=True)}
    for k, info in enumerate(hub.experts):
        token = ExportedToken(info.name, info.version, expert_token_text(info.name), v + k, sha[info.name])
        result.tokens.append(token)
    _extend_model(model, hub.w_e_t.T)  # (N, C)
    _set_sampling(model.generation_config, hub.sampling)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _check_tokens(tmp, result)


def _add_tokens(tokenizer: Any, v: int, names: list[str]) -> int:
    """Pad the tokenizer to `v` tokens with reserved ones, then add one token per expert (ids v, v+1, …)."""
    from tokenizers import AddedToken

    have = len(tokenizer)
    if have > v:
        raise EtrHubError(
            f"the meta model's tokenizer has {have} tokens but its output embedding only {v} rows",
            "export a meta model whose tokenizer fits its vocabulary",
        )
    reserved = [reserved_token_text(i) for i in range(v - have)]
    added = [AddedToken(t, special=False, normalized=False) for t in [*reserved, *map(expert_token_text, names)]]
    tokenizer.add_tokens(added)
    return len(reserved)


def _extend_model(model: Any, w_e: torch.Tensor) -> None:
    """In place: the LM head becomes [W_V; W_E] (V + N rows) and the input embedding gets N rows, untied."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    w_v = output_embedding(model)  # (V, C)
    n, (v, c) = int(w_e.shape[0]), w_v.shape
    new_head = torch.nn.Linear(c, v + n, bias=head.bias is not None, dtype=w_v.dtype, device=w_v.device)
    new_embed = torch.nn.Embedding(v + n, c, dtype=embed.weight.dtype, device=embed.weight.device)
    with torch.no_grad():
        new_head.weight.copy_(exported_head(w_v, w_e.to(w_v.device)))
        bias = exported_bias(head.bias.detach() if head.bias is not None else None, n)
        if bias is not None:
            new_head.bias.copy_(bias)
        new_embed.weight.copy_(exported_input_embedding(embed.weight.detach(), n))
    model.set_input_embeddings(new_embed)
    model.set_output_embeddings(new_head)
    text_config = model.config.get_text_config()
    for config in (model.config, text_config) if text_config is not model.config else (model.config,):
        config.vocab_size = v + n
        config.tie_word_embeddings = False


def _set_sampling(config: Any, sampling: Any) -> None:
    """The generation config an engine reads: the sampling the hub recommends for this model."""
    config.do_sample = sampling.temperature > 0
    if config.do_sample:
        config.temperature, config.top_p = sampling.temperature, sampling.top_p
    if sampling.repetition_penalty != 1.0:
        config.repetition_penalty = sampling.repetition_penalty


def _check_tokens(folder: Path, result: ExportResult) -> None:
    """Reload the written tokenizer: each expert's text is one token at its id, and decodes back to itself."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    for t in result.tokens:
        ids = tokenizer(t.token, add_special_tokens=False)["input_ids"]
        if ids != [t.token_id] or tokenizer.decode([t.token_id]) != t.token:
            raise EtrHubError(  # a tokenizer that normalises added tokens: the engine could not show the route
                f"the exported tokenizer encodes {t.token} as {ids}, not [{t.token_id}]",
                "report it: this meta model's tokenizer cannot carry expert tokens",
            )

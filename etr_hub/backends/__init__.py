"""Expert backends: how an expert model answers once its token wins. One folder per kind,
registered below in one line each; the manifest's expert ModelRef kind picks the backend.

    local   a transformers model in this process (local folder, pinned Hub revision, GGUF, embedded)
    lora    a PEFT LoRA adapter over the meta model's own base weights (one copy in memory)
    remote  an OpenAI-compatible /v1/completions endpoint (vLLM, SGLang, llama.cpp, etr-hub serve)

Backend modules import torch/httpx; they are imported only when an expert is created.
"""

from __future__ import annotations

import importlib
from typing import Any

from etr_hub.backends.base import (
    Chunk,
    ExpertBackend,
    ExpertError,
    ExpertSpec,
    GenSettings,
    Handoff,
)
from etr_hub.models.refs import ModelRef

BACKENDS: dict[str, str] = {}  # backend name -> "module:Class"
BY_REF_KIND: dict[str, str] = {}  # ModelRef kind -> backend name


def register(name: str, ref_kinds: tuple[str, ...], target: str) -> None:
    BACKENDS[name] = target
    BY_REF_KIND.update({kind: name for kind in ref_kinds})


register("local", ("local", "hf", "gguf", "embedded"), "etr_hub.backends.local:LocalBackend")
register("lora", ("peft",), "etr_hub.backends.lora:LoraBackend")
register("remote", ("openai",), "etr_hub.backends.remote:RemoteBackend")


def backend_name(ref: ModelRef) -> str | None:
    return BY_REF_KIND.get(ref.kind)


def backend_class(spec: ExpertSpec) -> type[ExpertBackend]:
    name = backend_name(spec.ref)
    if name is None:
        raise ExpertError(
            f"no backend serves {spec.ref.kind} experts ({spec.name})", f"use one of: {', '.join(sorted(BY_REF_KIND))}"
        )
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_backend(spec: ExpertSpec, meta: Any) -> ExpertBackend:
    return backend_class(spec)(spec, meta)


def meta_layer_to_keep(specs: Any) -> int | None:
    """The lowest decoder layer any expert wants the meta runner to keep the input of."""
    wanted = []
    for spec in specs:
        try:
            wanted.append(backend_class(spec).meta_layer_to_keep(spec))
        except ExpertError:
            continue
    wanted = [layer for layer in wanted if layer is not None]
    return min(wanted) if wanted else None


__all__ = [
    "BACKENDS",
    "Chunk",
    "ExpertBackend",
    "ExpertError",
    "ExpertSpec",
    "GenSettings",
    "Handoff",
    "backend_class",
    "backend_name",
    "create_backend",
    "meta_layer_to_keep",
    "register",
]

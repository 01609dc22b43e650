"""Expert backends: how an expert model answers once its token wins.

Backends are plug-ins, found through the entry-point group `etr_hub.backends` (etr_hub/plugins.py);
an entry point's name is the backend's kind. etr-hub's own are registered the same way, in
pyproject.toml, one folder each:

    local   a transformers model in this process (local folder, pinned Hub revision, GGUF, embedded)
    lora    a PEFT LoRA adapter over the meta model's own base weights (one copy in memory)
    remote  an OpenAI-compatible /v1/completions endpoint (vLLM, SGLang, llama.cpp, etr-hub serve)

An expert's reference picks its backend: the one named like the reference's kind, else the one
listing that kind in its `ref_kinds` (local serves hf, gguf and embedded references). A bundle
only names a kind; the code is always an installed package's. Backend modules import torch or
httpx, so they are imported when a backend is looked up, not here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from etr_hub.backends.base import Chunk, ExpertBackend, ExpertError, ExpertSpec, GenSettings, Handoff
from etr_hub.models.refs import BUILTIN_KINDS, ModelRef
from etr_hub.plugins import backend_entry_points, plugin_backend_kinds


def load_backend(kind: str) -> type[ExpertBackend]:
    """The class of the installed backend `kind`; ExpertError when it is missing or does not import."""
    entry = backend_entry_points().get(kind)
    if entry is None:
        raise ExpertError(f"no backend '{kind}' is installed", installed_backends())
    try:
        cls = entry.load()
    except Exception as exc:  # a plug-in's bug must not take the hub down
        raise ExpertError(
            f"backend '{kind}' ({entry.value}) failed to import: {type(exc).__name__}: {exc}",
            "fix or reinstall the package that provides it",
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, ExpertBackend)):
        raise ExpertError(f"backend '{kind}' ({entry.value}) is not an ExpertBackend", "fix the package's entry point")
    return cls


def backend_kind(ref: ModelRef) -> str | None:
    """The installed backend that serves `ref` (None: none does)."""
    installed = backend_entry_points()
    if ref.kind in installed:
        return ref.kind
    return next((kind for kind in installed if ref.kind in _ref_kinds(kind)), None)


def _ref_kinds(kind: str) -> tuple[str, ...]:
    try:
        return load_backend(kind).ref_kinds
    except ExpertError:
        return ()  # a broken plug-in serves nothing; its own experts say why when they load


def served_ref_kinds() -> list[str]:
    """Every reference kind some installed backend serves."""
    kinds = {*BUILTIN_KINDS, *plugin_backend_kinds()}  # lora and remote name backends, not references
    return sorted({kind for name in backend_entry_points() for kind in (name, *_ref_kinds(name)) if kind in kinds})


def installed_backends() -> str:
    """The installed backend kinds, for an error's fix (none: etr-hub's own metadata is missing)."""
    kinds = ", ".join(sorted(backend_entry_points()))
    return f"installed backends: {kinds}" if kinds else "no backend is installed: reinstall etr-hub (pip install -e .)"


def backend_class(spec: ExpertSpec) -> tuple[str, type[ExpertBackend]]:
    """(kind, class) of the backend that serves `spec`; ExpertError when none does."""
    kind = backend_kind(spec.ref)
    if kind is None:
        raise ExpertError(
            f"no backend serves {spec.ref.kind} experts ({spec.name})", f"use one of: {', '.join(served_ref_kinds())}"
        )
    return kind, load_backend(kind)


def create_backend(spec: ExpertSpec, meta: Any) -> ExpertBackend:
    kind, cls = backend_class(spec)
    backend = cls(spec, meta)
    backend.kind = kind
    return backend


def meta_layer_to_keep(specs: Iterable[ExpertSpec]) -> int | None:
    """The lowest decoder layer any expert wants the meta runner to keep the input of."""
    wanted = []
    for spec in specs:
        try:
            wanted.append(backend_class(spec)[1].meta_layer_to_keep(spec))
        except ExpertError:
            continue
    layers = [layer for layer in wanted if layer is not None]
    return min(layers) if layers else None


__all__ = [
    "Chunk",
    "ExpertBackend",
    "ExpertError",
    "ExpertSpec",
    "GenSettings",
    "Handoff",
    "backend_class",
    "backend_kind",
    "create_backend",
    "installed_backends",
    "load_backend",
    "meta_layer_to_keep",
    "served_ref_kinds",
]

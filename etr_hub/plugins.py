"""Installed plug-ins, found by name in package metadata (entry points), without importing them.

A package adds an expert backend by declaring an entry point in the group `etr_hub.backends`
(pyproject.toml: `[project.entry-points."etr_hub.backends"]`, `NAME = "module:Class"`); the
name is the backend's kind. etr-hub registers its own local, lora and remote backends the
same way. Only the operator installs packages: a bundle can name a kind, never bring code.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

BACKENDS_GROUP = "etr_hub.backends"


def backend_entry_points() -> dict[str, EntryPoint]:
    """Backend kind -> its entry point (the first installed one of each name); nothing is imported."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=BACKENDS_GROUP):
        found.setdefault(entry.name, entry)
    return found


def plugin_backend_kinds() -> list[str]:
    """Backends from packages other than etr-hub: the kinds a bundle's expert reference may name
    besides the built-in reference kinds (hf, local, gguf, peft, embedded, openai)."""
    return sorted(kind for kind, entry in backend_entry_points().items() if not entry.module.startswith("etr_hub."))

"""What several commands share: opening the registry, and the hub with a spinner and the skipped experts reported."""

from __future__ import annotations

from typing import Any

from etr_hub.cli.output import err, note, safe, warn


def open_registry():
    """The registry of $ETR_HUB_HOME / $ETR_HUB_DATABASE_URL, migrated to the current schema."""
    from etr_hub.registry import Registry

    return Registry.open()


def open_hub(*, quiet: bool = False, memory_budget_mb: int | None = None, plain_note: bool = True, **options: Any):
    """Hub.open() for a command: a spinner on stderr unless `quiet`, each skipped expert a warning.
    `options`: Hub.open's min_p, fallback, device / dtype, failures_before_cooldown / cooldown_s (and meta_url /
    meta_model / meta_export: a router)."""
    from etr_hub.runtime import Hub

    if quiet:
        hub = Hub.open(memory_budget_mb=memory_budget_mb, **options)
    else:
        with err.status("loading the meta model…") as status:
            hub = Hub.open(status=lambda m: status.update(safe(f"{m}…")), memory_budget_mb=memory_budget_mb, **options)
    for name, reason in hub.skipped:
        warn(f"skipped expert '{name}': {reason}")
    if plain_note and not hub.experts and not quiet:
        note("no experts registered: plain meta-model chat (add one with `etr-hub expert add PATH`)")
    return hub

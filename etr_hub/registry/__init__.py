"""The registry: which meta model, which experts (and their query sets) are plugged in."""

from etr_hub.registry.api import Registry

__all__ = ["Registry"]

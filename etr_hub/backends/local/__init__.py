"""A transformers model in this process: local folder, pinned Hub revision, GGUF or embedded."""

from etr_hub.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]

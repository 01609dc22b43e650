"""An OpenAI-compatible /v1/completions endpoint (vLLM, SGLang, llama.cpp server, etr-hub serve)."""

from etr_hub.backends.remote.backend import RemoteBackend

__all__ = ["RemoteBackend"]

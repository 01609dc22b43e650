"""etr-hub: plug expert LLMs into a frozen generalist "meta" LLM as one learned token each.

Expert Token Routing (arXiv 2403.16854). The library is the product; `etr_hub.cli` is a thin
Typer layer over it. Heavy imports (torch, transformers, sqlmodel) happen inside functions so
that `etr-hub --help` stays fast.
"""

__version__ = "0.1.0"

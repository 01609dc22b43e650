"""The bundle's model card for the Hugging Face Hub: README.md with YAML front matter the Hub reads
(license, base_model, tags `etr-hub` and `expert-token`), so an exported bundle is ready to upload."""

from __future__ import annotations

import re
from typing import cast

from etr_hub.bundle.manifest import Manifest

HUB_CARD = "README.md"  # the file the Hub shows as a repository's model card
HUB_TAGS = ("etr-hub", "expert-token")
# the embedded default meta model's Hub repository (models/default_meta.py converts the same model from GGUF)
_EMBEDDED_REPOS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HUB_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


def hub_model_card(card_text: str | None, manifest: Manifest) -> str:
    """`card_text` (the bundle's own card, or None) with the Hub's front matter added where it lacks it."""
    from huggingface_hub import ModelCard, ModelCardData

    card = ModelCard(card_text if card_text and card_text.strip() else _default_body(manifest))
    data = cast(ModelCardData, card.data)  # a ModelCard's data is always ModelCardData
    if not data.license:
        license_id = manifest.license.strip().lower()
        if _HUB_LICENSE.match(license_id):
            data.license = license_id
        else:
            data.license, data.license_name = "other", re.sub(r"[^a-z0-9.+-]+", "-", license_id).strip("-") or "custom"
    base = _base_model(manifest)
    if not data.base_model and base:
        data.base_model = base
    data.tags = [*(data.tags or []), *(t for t in HUB_TAGS if t not in (data.tags or []))]
    return str(card)


def _base_model(manifest: Manifest) -> str | None:
    """The meta model as a Hub repository id, where it is one."""
    ref = manifest.meta.reference.strip()
    if ref.startswith("hf:"):
        return ref.removeprefix("hf:").split("@", 1)[0] or None
    return _EMBEDDED_REPOS.get(ref.removeprefix("embedded:"))


def _default_body(manifest: Manifest) -> str:
    return (
        f"# {manifest.name}\n\n{manifest.description or 'An expert token for etr-hub.'}\n\n"
        f"An etr-hub expert bundle (Expert Token Routing, arXiv 2403.16854) from {manifest.provider}: one "
        f"learned output row for the meta model `{manifest.meta.reference}`.\n\n"
        "Add it to a hub with `etr-hub expert add hf:ORG/REPO@<commit sha>`.\n"
    )

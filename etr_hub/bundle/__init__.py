"""The expert plug-in bundle: what a provider hands over.

my-expert/
  expert.json          manifest (validated by `Manifest`, unknown fields rejected)
  token.safetensors    the expert-token row, shape (1, d)
  query_set.jsonl      optional: the expert query set it was trained on
  adapter/             optional: a PEFT adapter when the expert is a LoRA of a base model
  README.md            optional: model card
"""

from etr_hub.bundle.io import Bundle, load_bundle, write_bundle
from etr_hub.bundle.manifest import SCHEMA_VERSION, Manifest

__all__ = ["SCHEMA_VERSION", "Bundle", "Manifest", "load_bundle", "write_bundle"]

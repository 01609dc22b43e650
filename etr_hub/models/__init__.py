"""Models: references (`refs`), safe loading (`loading`), the embedded default meta model
(`default_meta`), chat token ids (`chat`) and the meta fingerprint (`fingerprint`).

Only `refs` is imported here: the others pull in torch/transformers, so import them where used.
"""

from etr_hub.models.refs import ModelRef

__all__ = ["ModelRef"]

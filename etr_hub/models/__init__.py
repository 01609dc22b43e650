"""Models: references (`refs`), safe loading (`loading`), the embedded default meta model
(`default_meta`), chat token ids (`chat`), the meta fingerprint (`fingerprint`), and the one
meta-model session that query sets, training and evaluation share (`session`).

Only `refs` is imported here: the others pull in torch/transformers, so import them where used.
"""

from etr_hub.models.refs import ModelRef

__all__ = ["ModelRef"]

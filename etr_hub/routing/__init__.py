"""Expert Token Routing math: W_E assembly, the routing softmax and the token objective.

Shapes: V word tokens, N experts, C hidden size, B queries/positions.
"""

from etr_hub.routing.math import (
    WORD,
    assemble_expert_matrix,
    expert_token_init,
    expert_token_loss,
    pooled_routing_logits,
    routing_logits,
)

__all__ = [
    "WORD",
    "assemble_expert_matrix",
    "expert_token_init",
    "expert_token_loss",
    "pooled_routing_logits",
    "routing_logits",
]

"""Per-expert calibration: the bias an operator adds to one expert's logit at the routing position.

Expert k takes a routing position when its calibrated logit z_k = e_k·h + b_k beats the top word
logit and every other expert's calibrated logit, and p(k) ≥ min_p (`routing_winners`). Both are
"b_k above a threshold" per position, so the share of a set of positions that k takes grows
with b_k in steps, one step per position, and the bias that reaches a target share is read off
the sorted thresholds (RouteLLM's `calibrate_threshold`, per expert token).
"""

from __future__ import annotations

import math

import torch

from etr_hub.routing.math import calibrated_logits

# Added to a threshold so that the chosen bias decides the position the intended way despite
# float rounding between the cached float32 states and a live forward pass (logits are O(10)).
MARGIN = 1e-3


def win_thresholds(
    states: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    w_e: torch.Tensor,
    bias: torch.Tensor,
    k: int,
    min_p: float = 0.0,
) -> torch.Tensor:
    """(B,) per routing position, the bias b_k above which expert k takes it (others' biases fixed):
    its raw logit must clear the top word logit, every other calibrated expert logit, and
    log(min_p / (1 - min_p)) + logsumexp(lse_V, other experts) for p(k) ≥ min_p."""
    h, lse_v, top = states
    z = calibrated_logits(h, w_e, bias)  # (B, N)
    raw_k = z[:, k] - float(bias[k])  # (B,) e_k·h
    others = torch.cat([z[:, :k], z[:, k + 1 :]], dim=-1)  # (B, N - 1)
    rival = torch.cat([top.float().unsqueeze(-1), others], dim=-1).max(dim=-1).values  # (B,)
    if min_p > 0:
        mass = torch.logsumexp(torch.cat([lse_v.float().unsqueeze(-1), others], dim=-1), dim=-1)  # (B,)
        odds = math.log(min_p / (1 - min_p)) if min_p < 1 else math.inf
        rival = torch.maximum(rival, mass + odds)  # (B,)
    gap = rival - raw_k  # (B,)
    return gap.masked_fill(gap.isnan(), math.inf)  # (B,) a non-routable row never wins: +inf


def bias_for_share(thresholds: torch.Tensor, share: float) -> float:
    """The lowest bias at which expert k takes at least `share` of these positions (b > threshold
    takes it); -inf stands for "any bias" (share 0), +inf for "none reaches it"."""
    n = thresholds.numel()
    need = math.ceil(share * n - 1e-9)  # positions it must take
    if need <= 0:
        return -math.inf
    t = float(thresholds.sort().values[need - 1])  # the need-th easiest position
    return t + MARGIN if math.isfinite(t) else math.inf


def bias_under_share(thresholds: torch.Tensor, share: float) -> float:
    """The highest bias at which expert k takes at most `share` of these positions (+inf: any bias)."""
    n = thresholds.numel()
    allowed = math.floor(share * n + 1e-9)  # positions it may take
    if allowed >= n:
        return math.inf
    return float(thresholds.sort().values[allowed]) - MARGIN  # the first position it must not take

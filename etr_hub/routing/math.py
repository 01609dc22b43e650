"""The paper's equations as small pure functions (arXiv 2403.16854).

eq. 1   p(· | h) = softmax([W_V; W_E] h)                 -> routing_logits
eq. 4   L(e)     = -log p(expert token | query)            -> expert_token_loss
init    e        = mean of the rows of W_V                 -> expert_token_init
route   expert k wins when W_E h + b (b: the operator's     -> routing_winners
        bias) has its largest entry above every word
        logit, with p(k) ≥ min_p
guard   |e| ≤ MAX_ROW_NORM_RATIO · max_v |w_v|;           -> row_norm_ratio, routable_logits
        a non-finite expert logit never routes

Training and routing decisions only need the word vocabulary's log-sum-exp, not its V
logits: log p(expert k) = (W_E h)_k - logsumexp([lse_V(h), W_E h]). `pooled_routing_logits`
folds the V word tokens into one class (index WORD = 0) carrying lse_V, which keeps every
expert probability exact while the frozen meta model's part is computed once and cached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

WORD = 0  # pooled class index: "some word token", experts follow at 1..N
# A trained row starts at the mean of W_V's rows and weight decay keeps it near their size (the
# shipped experts: 0.25-0.33x the largest). A row 100x the largest word row is not a trained
# token: its logit dwarfs every word's, so it takes every prompt (a x1e4 row: p = 1.0 on small talk).
MAX_ROW_NORM_RATIO = 100.0


def assemble_expert_matrix(rows: Sequence[torch.Tensor], hidden_size: int) -> torch.Tensor:
    """Stack the registered experts' (1, C) rows into W_E."""
    if not rows:
        return torch.zeros(0, hidden_size)  # (0, C)
    w_e = torch.cat([r.reshape(1, hidden_size).float() for r in rows], dim=0)  # (N, C)
    return w_e


def expert_token_init(w_v: torch.Tensor) -> torch.Tensor:
    """Initial expert-token row: the mean of the output-embedding rows."""
    return w_v.float().mean(dim=0, keepdim=True)  # (V, C) -> (1, C)


def max_row_norm(w_v: torch.Tensor) -> float:
    """The largest L2 norm of an output-embedding row."""
    return float(w_v.float().norm(dim=-1).max())  # (V, C) -> (V,) -> ()


def row_norm_ratio(row: torch.Tensor, max_norm: float) -> float:
    """|e| / max_v |w_v| for one expert row (inf when the row overflows or W_V is all zeros)."""
    norm = float(row.double().norm())  # (1, C) -> (); float64: a float32 row near 3e38 overflows its own norm
    return norm / max_norm if max_norm > 0 else float("inf")


def routable_logits(expert: torch.Tensor) -> torch.Tensor:
    """Expert logits with NaN/±Inf set to -inf: a non-finite logit (an overflowing row, a half-
    precision overflow) means "not routable", never "wins"; the meta model answers instead."""
    return expert.masked_fill(~torch.isfinite(expert), float("-inf"))  # (..., N)


def routing_logits(h: torch.Tensor, w_v: torch.Tensor, w_e: torch.Tensor) -> torch.Tensor:
    """Full next-token logits over words then experts: [W_V; W_E] h."""
    word = h @ w_v.T  # (B, C) @ (C, V) -> (B, V)
    expert = h @ w_e.T.to(h.dtype)  # (B, C) @ (C, N) -> (B, N)
    return torch.cat([word, expert], dim=-1)  # (B, V + N)


def pooled_routing_logits(h: torch.Tensor, lse_v: torch.Tensor, w_e: torch.Tensor) -> torch.Tensor:
    """Logits over [any word token, expert 1..N]: softmax of these equals eq. 1 with the
    V word probabilities summed into one class."""
    expert = h.float() @ w_e.T.float()  # (B, C) @ (C, N) -> (B, N)
    return torch.cat([lse_v.float().unsqueeze(-1), expert], dim=-1)  # (B, 1 + N)


def calibrated_logits(h: torch.Tensor, w_e: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The expert logits at the routing position with the operator's per-expert bias: W_E h + b,
    non-finite ones at -inf (never routed)."""
    z = torch.addmm(bias.float(), h.float(), w_e.T.float())  # (N,) + (B, C) @ (C, N) -> (B, N)
    return z.nan_to_num_(nan=float("-inf"), posinf=float("-inf"))  # (B, N)


def routing_winners(
    h: torch.Tensor, top: torch.Tensor, lse_v: torch.Tensor, w_e: torch.Tensor, bias: torch.Tensor, min_p: float = 0.0
) -> torch.Tensor:
    """Who takes each routing position as greedy decoding decides it: 1 + k when expert k's calibrated
    logit is the largest of all (above the top word logit `top`) and its probability is at least
    `min_p`, else WORD (the meta model answers). Ties go to a word, then to the lower expert index."""
    return winners_from_logits(calibrated_logits(h, w_e, bias), top, lse_v, min_p)  # (B,)


def winners_from_logits(z: torch.Tensor, top: torch.Tensor, lse_v: torch.Tensor, min_p: float = 0.0) -> torch.Tensor:
    """`routing_winners` from the calibrated expert logits z (B, N)."""
    if z.shape[-1] == 0:
        return torch.zeros(z.shape[0], dtype=torch.long)  # (B,)
    best, idx = z.max(dim=-1)  # (B,), (B,)
    wins = best > top.float()  # (B,)
    if min_p > 0:  # p(best) = exp(best - logsumexp([lse_V, z])), eq. 1 with the V words pooled
        wins &= best - torch.logsumexp(torch.cat([lse_v.float().unsqueeze(-1), z], dim=-1), dim=-1) >= math.log(min_p)
    return torch.where(wins, idx + 1, WORD)  # (B,)


def admission_winners(
    states: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    w_e: torch.Tensor,
    bias: torch.Tensor,
    row: torch.Tensor,
    row_bias: float = 0.0,
    min_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Who wins each routing position (0, or 1 + k; the new row is 1 + N) without and with a new
    expert row, from the states (hidden (B, C), lse_V (B,), top word logit (B,)) and one matmul."""
    h, lse_v, top = states
    w_all = torch.cat([w_e.float(), row.float().reshape(1, -1)], dim=0)  # (N + 1, C)
    b_all = torch.cat([bias.float(), torch.tensor([float(row_bias)])])  # (N + 1,)
    z = calibrated_logits(h, w_all, b_all)  # (B, N + 1)
    if min_p > 0:  # the new token changes every probability: decide both from scratch
        return winners_from_logits(z[:, :-1], top, lse_v, min_p), winners_from_logits(z, top, lse_v, min_p)
    n, top = w_e.shape[0], top.float()
    if n:
        best, idx = z[:, :-1].max(dim=-1)  # (B,), (B,) the registered experts' best
        before = torch.where(best > top, idx + 1, WORD)  # (B,)
        rival = torch.maximum(best, top)  # (B,)
    else:
        before, rival = torch.zeros_like(top, dtype=torch.long), top
    return before, torch.where(z[:, -1] > rival, n + 1, before)  # (B,), (B,): a tie stays with the earlier


def expert_token_loss(h: torch.Tensor, lse_v: torch.Tensor, w_e: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean -log p(target | h) over the batch; target is WORD (0) or 1 + expert index."""
    logits = pooled_routing_logits(h, lse_v, w_e)  # (B, 1 + N)
    return F.cross_entropy(logits, target)  # ()

"""The paper's equations as small pure functions (arXiv 2403.16854).

eq. 1   p(· | h) = softmax([W_V; W_E] h)                 -> routing_logits
eq. 4   L(e)     = -log p(expert token | query)            -> expert_token_loss
init    e        = mean of the rows of W_V                 -> expert_token_init
guard   |e| ≤ MAX_ROW_NORM_RATIO · max_v |w_v|;           -> row_norm_ratio, routable_logits
        a non-finite expert logit never routes

Training and routing decisions only need the word vocabulary's log-sum-exp, not its V
logits: log p(expert k) = (W_E h)_k - logsumexp([lse_V(h), W_E h]). `pooled_routing_logits`
folds the V word tokens into one class (index WORD = 0) carrying lse_V, which keeps every
expert probability exact while the frozen meta model's part is computed once and cached.
"""

from __future__ import annotations

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


def admission_winners(
    h: torch.Tensor, lse_v: torch.Tensor, w_e: torch.Tensor, row: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Who wins the routing position (pooled index: WORD, 1 + k, the new row at 1 + N) without and
    with a new expert row, from one matmul h @ [W_E; e]^T. Ties go to the lower index: a word
    before any expert, a registered expert before the new one."""
    expert = routable_logits(h.float() @ torch.cat([w_e.float(), row.float()], dim=0).T)  # (B, C) @ (C, N + 1)
    n, word = w_e.shape[0], lse_v.float()  # word: (B,) the pooled word class's logit
    if n:
        best, idx = expert[:, :n].max(dim=-1)  # (B,), (B,) the registered experts' best
    else:
        best, idx = torch.full_like(word, float("-inf")), torch.zeros_like(word, dtype=torch.long)
    before = torch.where(best > word, idx + 1, WORD)  # (B,)
    after = torch.where(expert[:, n] > torch.maximum(best, word), n + 1, before)  # (B,)
    return before, after


def expert_token_loss(h: torch.Tensor, lse_v: torch.Tensor, w_e: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean -log p(target | h) over the batch; target is WORD (0) or 1 + expert index."""
    logits = pooled_routing_logits(h, lse_v, w_e)  # (B, 1 + N)
    return F.cross_entropy(logits, target)  # ()

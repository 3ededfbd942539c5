"""Score hooks that only mask: knockouts a fused attention kernel can apply as a mask.

A ``hook_attn_scores`` hook whose whole effect is ``scores.masked_fill(blocked, finfo.min)``
(mask-mode knockout) carries a function that says which edges it blocks. Under SDPA the layer
then stays on the fused kernel with those edges removed from its boolean mask, instead of
rebuilding the whole pattern eagerly; the probabilities are the eager ones up to float rounding
(a blocked score of ``finfo.min`` has weight exactly 0 in both). Under eager attention, or when
any other hook reads the scores or the pattern, the hook runs as a plain score hook.

Example:
    >>> import torch
    >>> def first_key(shape, name, device):  # every query loses key 0
    ...     return torch.arange(shape[3], device=device) == 0
    >>> def knock(scores, hook):
    ...     return scores.masked_fill(first_key(scores.shape, hook.name, scores.device), -1e38)
    >>> knock = mask_only(knock, first_key)
    >>> blocked_edges(knock)((1, 2, 3, 3), "blocks.0.attn.hook_attn_scores", "cpu")
    tensor([ True, False, False])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

BlockedEdges = Callable[[tuple[int, int, int, int], str, Any], Bool[Tensor, "batch heads q k"]]
"""``f((batch, heads, q, k), hook_name, device)``: the edges a mask-only score hook blocks, a
boolean tensor broadcastable to the scores' shape (``heads`` may be 1)."""

_ATTRIBUTE = "vlm_lens_blocked_edges"


def mask_only(hook_fn: Callable[..., Any], edges: BlockedEdges) -> Callable[..., Any]:
    """Mark `hook_fn` as a mask-only score hook that blocks `edges`; returns `hook_fn`."""
    setattr(hook_fn, _ATTRIBUTE, edges)
    return hook_fn


def blocked_edges(hook_fn: Callable[..., Any]) -> BlockedEdges | None:
    """The blocked-edges function of a mask-only score hook, or ``None`` for any other hook."""
    return getattr(hook_fn, _ATTRIBUTE, None)


def without_blocked(
    allowed: Bool[Tensor, "#batch #heads q k"],
    edges: list[BlockedEdges],
    shape: tuple[int, int, int, int],
    name: str,
) -> Bool[Tensor, "batch heads q k"]:
    """`allowed` with every edge of `edges` removed."""
    for edge in edges:
        allowed = allowed & ~edge(shape, name, allowed.device)
    return allowed


def causal_allowed(q_len: int, k_len: int, device: Any) -> Bool[Tensor, "1 1 q k"]:
    """The causal mask of `q_len` queries that are the last of `k_len` keys."""
    ones = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    return ones.tril(k_len - q_len)[None, None]

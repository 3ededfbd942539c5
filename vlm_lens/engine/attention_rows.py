"""Attention rows without the pattern: the engine behind `attention_share` and `find_sinks`.

The one non-trivial piece is `key_attention_hooks`: hooks on
``blocks.{l}.attn.hook_rot_q``/``hook_rot_k`` that compute only the selected query rows of the
attention pattern (`pattern_rows`, as HF eager attention does) and reduce them *inside the hook*
to a ``[batch, k]`` vector per layer (mean over the rows, sum over heads), so no analysis builds
or keeps a ``[q, k]`` pattern and the layers keep their fast attention path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vlm_lens import hooks
from vlm_lens.attention_structure import AttentionStructure
from vlm_lens.layout import TokenLayout
from vlm_lens.positions import PositionSpec, select
from vlm_lens.types import Hook

if TYPE_CHECKING:
    from vlm_lens.model import HookedVLM


def image_side(layout: TokenLayout) -> Bool[Tensor, "batch pos"]:
    """The paper's image-side key positions: every position that belongs to an image
    (``image_index >= 0``: image tokens, row ends, the gate, closing specials), minus the opening
    specials (``image_start``: BOI and Emu3's size header), as the paper drops BOS/BOI."""
    return (layout.image_index >= 0) & ~layout.mask("image_start") & ~layout.mask("pad")


def query_rows(
    queries: PositionSpec, layout: TokenLayout, *, what: str = "attention"
) -> list[Tensor]:
    """Query positions of each sequence (CPU long tensors).

    Raises:
        ValueError: when a sequence has no query position or no image-side position.
    """
    mask = select(queries, layout)
    side = image_side(layout)
    rows = []
    for b in range(mask.shape[0]):
        if not bool(side[b].any()):
            raise ValueError(
                f"sequence {b} of the batch has no image; {what} needs one image per prompt"
            )
        if not bool(mask[b].any()):
            raise ValueError(
                f"sequence {b} of the batch has no query position (default: text after the "
                f"gate); add text after the image or pass queries="
            )
        rows.append(mask[b].nonzero().flatten())
    return rows


def key_attention_hooks(
    model: HookedVLM,
    layout: TokenLayout,
    layers: Iterable[int],
    rows: list[Tensor],
    store: dict[int, Tensor],
    structure: AttentionStructure | None = None,
) -> list[Hook]:
    """Hooks that store, per layer, the attention each key receives from the query `rows`.

    For layer ``l``, ``store[l][b, k] = sum_h mean_{i in rows[b]} pattern[b, h, i, k]``
    (float64, CPU). Only the selected rows of the pattern are computed, from the rotated
    queries and keys (``hook_rot_q``/``hook_rot_k``) with the model's scaling, the family's
    attention structure (causal, plus bidirectional blocks: `VLMAdapter.attention_structure`),
    the padding mask (and sliding window) and an fp32 softmax, as Hugging Face's eager attention
    computes them; the layer itself keeps its fast attention path (no ``hook_pattern`` hook) and
    no ``[q, k]`` pattern is ever built or kept.

    Args:
        model: the model (for each layer's scaling and window).
        layout: the batch's layout (for the padding mask).
        layers: layers to hook.
        rows: per sequence, the query positions.
        store: dict the hooks fill.
        structure: the batch's `AttentionStructure` (``batch.attention``: PaliGemma's comes
            from its ``token_type_ids``); default: the adapter's, from the layout alone.
    """
    hook_list: list[Hook] = []
    valid = ~layout.mask("pad")
    if structure is None:
        structure = model.adapter.attention_structure(layout)
    for layer in layers:
        hook_list.extend(_pattern_row_hooks(model, layer, rows, valid, structure, store))
    return hook_list


def visible_keys(
    structure: AttentionStructure,
    sequence: int,
    queries: Tensor,
    n_keys: int,
    valid: Bool[Tensor, " pos"],
    window: int | None = None,
) -> Bool[Tensor, "n_rows pos"]:
    """Which keys each query of one sequence reads, as Hugging Face masks them:
    ``((causal & sliding window) | same block) & not padding``.

    Example:
        >>> s = AttentionStructure.from_spans(1, 4, [[(1, 3)]])
        >>> valid = torch.ones(4, dtype=torch.bool)
        >>> visible_keys(s, 0, torch.tensor([1, 3]), 4, valid).int().tolist()
        [[1, 1, 1, 0], [1, 1, 1, 1]]
    """
    pos = torch.arange(n_keys)
    q = queries.to("cpu")
    causal = pos[None, :] <= q[:, None]
    if window is not None:
        causal &= pos[None, :] > q[:, None] - window
    return (causal | structure.same_block(q, pos, sequence)) & valid.to("cpu")[None, :]


def pattern_rows(
    query: Float[Tensor, "n_rows head d_head"],
    keys: Float[Tensor, "pos kv_head d_head"],
    visible: Bool[Tensor, "n_rows pos"],
    scaling: float,
    softcap: float | None = None,
) -> Float[Tensor, "head n_rows pos"]:
    """Post-softmax attention rows of one sequence, as HF eager attention computes them.

    Scores ``q k^T * scaling`` (soft-capped, ``softcap * tanh(s / softcap)``, where the model
    caps them: Gemma 2), blocked keys at the dtype's minimum (HF eager adds that value,
    which gives the same softmax), softmax in float32, cast back to the query dtype. Keys with
    fewer heads (GQA) are repeated over the query heads.

    Example:
        >>> import torch
        >>> q, k = torch.randn(2, 4, 8), torch.randn(5, 2, 8)
        >>> visible = torch.ones(2, 5, dtype=torch.bool).tril(diagonal=3)
        >>> rows = pattern_rows(q, k, visible, scaling=8**-0.5)
        >>> rows.shape, bool(torch.allclose(rows.sum(-1), torch.ones(4, 2)))
        (torch.Size([4, 2, 5]), True)
    """
    groups = query.shape[1] // keys.shape[1]
    k = keys.transpose(0, 1)
    if groups > 1:
        k = k.repeat_interleave(groups, dim=0)
    scores = torch.matmul(query.transpose(0, 1), k.transpose(-2, -1)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~visible[None], torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


def _pattern_row_hooks(
    model: HookedVLM,
    layer: int,
    rows: list[Tensor],
    valid: Tensor,
    structure: AttentionStructure,
    store: dict[int, Tensor],
) -> list[Hook]:
    scaling = model.attention_scaling(layer)
    window = model.attention_window(layer)
    hf_attn = model.bridge.blocks[layer].attn.original_component
    softcap = getattr(hf_attn, "attn_logit_softcapping", None)  # Gemma 2
    queries: dict[str, Tensor] = {}

    def check(tensor: Tensor, what: str) -> None:
        if tensor.shape[0] != len(rows):
            raise ValueError(
                f"attention {what} have batch size {tensor.shape[0]} but the batch has "
                f"{len(rows)} sequences"
            )
        longest = max(int(r.max()) for r in rows)
        if tensor.shape[1] <= longest:
            raise ValueError(
                f"attention {what} have {tensor.shape[1]} positions; the analysis needs the "
                "full prompt in one forward pass (no KV cache)"
            )

    def keep_queries(q: Float[Tensor, "batch pos head d_head"], hook: Any) -> None:  # noqa: ARG001
        check(q, "queries")
        queries["q"] = q

    def reduce_rows(k: Float[Tensor, "batch pos kv_head d_head"], hook: Any) -> None:  # noqa: ARG001
        check(k, "keys")
        q = queries.pop("q")
        out = []
        for b, idx in enumerate(rows):
            i = idx.to(k.device)
            visible = visible_keys(structure, b, idx, k.shape[1], valid[b], window)
            pattern = pattern_rows(q[b, i], k[b], visible.to(k.device), scaling, softcap)
            out.append(pattern.sum(dim=(0, 1), dtype=torch.float32) / len(i))
        store[layer] = torch.stack(out).detach().to("cpu", torch.float64)

    return [(hooks.rot_q(layer), keep_queries), (hooks.rot_k(layer), reduce_rows)]

"""Cross-modal attention share: how text attention to the image splits over image-side positions.

The paper's f^l_j ("The Narrow Gate", section 2b): at layer ``l``, the attention that the text
after the image gives to image-side position ``j``, averaged over the text query rows, summed over
heads, and normalised so that the shares of all image-side positions sum to 1. Positions are then
grouped by role (gate, closing specials, row ends, named sink positions, internal image tokens)
for a stacked bar per layer.

Definitions used here (per prompt ``p``, layer ``l``, post-softmax pattern ``A``):

* queries ``Q_p``: `queries` (default: text strictly after the last gate, never padding);
* image-side keys ``S_p``: positions with ``image_index >= 0`` (image tokens, row ends, gate,
  closing specials) minus ``image_start`` (BOI, Emu3's size header); BOS is never image-side;
* mass ``m^l_p[j] = sum_h mean_{i in Q_p} A^{l,h}[i, j]`` for ``j in S_p``;
* dataset share of group ``g``: ``share[l, g] = mean_p M^l_p[g] / sum_g' mean_p M^l_p[g']`` with
  ``M^l_p[g] = sum_{j in g} m^l_p[j]``; the per-prompt vectors are averaged *before* normalising
  (prompts where text looks at the image more weigh more), as the paper's running mean of patterns.
  ``per_prompt`` keeps each prompt normalised on its own.

Prompts with several images: every image's image-side positions are keys (all of them together are
normalised to 1), and the default queries are the text after the *last* gate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor

from vlm_lens.analysis._common import map_batches, resolve_layers, run
from vlm_lens.analysis.persist import register_result
from vlm_lens.analysis.provenance import Provenance
from vlm_lens.batch import Batch, attention_of
from vlm_lens.engine.attention_rows import image_side, key_attention_hooks, query_rows
from vlm_lens.layout import TokenLayout
from vlm_lens.model import HookedVLM
from vlm_lens.positions import PositionSpec, after, image_token, select

REMAINDER = "image"
"""The last group: every image-side position no earlier group claimed (internal image tokens)."""

DEFAULT_GROUPS: dict[str, PositionSpec] = {
    "gate": "gate",
    "image_end": "image_end",
    "image_row_end": "image_row_end",
    "first_image_token": image_token(0),
    "last_image_token": image_token(-1),
}
"""Groups before the user's and before ``"image"``, in claiming order."""


@register_result
@dataclass(frozen=True)
class AttentionShareResult:
    """Share of text→image attention per layer and position group.

    Attributes:
        layers: the layers measured.
        groups: group names in claiming order; ``"image"`` (internal image tokens) is last.
        share: ``[layers, groups]``; each row sums to 1 (the paper's f^l summed per group).
        mass: ``[layers, groups]``, the un-normalised dataset mean of the per-prompt group sums:
            attention summed over heads, averaged over query rows and prompts (each row sums to at
            most ``n_heads``); ``share = mass / mass.sum(1)``.
        per_prompt: ``[prompts, layers, groups]``, each prompt normalised on its own.
        per_token: ``[layers, n_image_tokens]``: share of each image token (order within the
            images' image tokens, row ends excluded, images concatenated), averaged over prompts
            and normalised like `share`; ``None`` when prompts differ in their number of image
            tokens.
        n_prompts: number of prompts averaged.
        meta: what produced the result: model, inputs, settings (`vlm_lens.analysis.provenance`);
            `save_result` keeps it.

    Example:
        >>> res = attention_share(model, batch, groups={"32nd": image_token(31)})  # doctest: +SKIP
        >>> res.to_frame().columns.tolist()  # doctest: +SKIP
        ['layer', 'group', 'share']
    """

    layers: tuple[int, ...]
    groups: tuple[str, ...]
    share: np.ndarray
    mass: np.ndarray
    per_prompt: np.ndarray
    per_token: np.ndarray | None
    n_prompts: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per (layer, group) with columns ``layer, group, share``."""
        return pd.DataFrame(
            {
                "layer": np.repeat(np.asarray(self.layers), len(self.groups)),
                "group": np.tile(np.asarray(self.groups, dtype=object), len(self.layers)),
                "share": self.share.reshape(-1),
            }
        )


def attention_share(
    model: HookedVLM,
    batches: Batch | Iterable[Batch],
    *,
    layers: Iterable[int] | None = None,
    queries: PositionSpec = after("text", "gate"),  # noqa: B008 (immutable closure)
    groups: Mapping[str, PositionSpec | None] | None = None,
    progress: bool = False,
) -> AttentionShareResult:
    """Measure how the text's attention to the image splits over image-side positions.

    Computes only the `queries` rows of every selected layer's post-softmax pattern (from the
    rotated queries and keys, as HF eager attention does; the layers themselves keep their fast
    attention path) and reduces them inside the hook to one ``[batch, k]`` vector (mean over the
    rows, sum over heads); no ``[q, k]`` pattern is built or kept.

    Args:
        model: the `HookedVLM`.
        batches: one `Batch` or an iterable of batches (prompts may differ in length and padding).
        layers: layers to measure (default: all).
        queries: the query rows (default: text strictly after the last gate).
        groups: extra named position groups, ``{"32nd": image_token(31)}``, claimed after the
            default groups and before ``"image"``; a default name overrides that group and a
            ``None`` value drops it. Each position joins the first group that claims it, so the
            groups are disjoint and their shares sum to 1.
        progress: show a progress bar over batches.

    Returns:
        An `AttentionShareResult`.

    Raises:
        ValueError: for a prompt without an image or without query rows, a group named
            ``"image"``, or bad layers.

    Example:
        >>> from vlm_lens import HookedVLM
        >>> from vlm_lens.analysis.attention_share import attention_share
        >>> from vlm_lens.testing import build_tiny, sample_image
        >>> tiny = build_tiny("chameleon")
        >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
        >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
        >>> result = attention_share(model, batch)
        >>> result.groups
        ('gate', 'image_end', 'image_row_end', 'first_image_token', 'last_image_token', 'image')
        >>> result.share.shape, bool(abs(result.share.sum(1) - 1).max() < 1e-9)
        ((2, 6), True)
    """
    layer_ids = resolve_layers(model, layers)
    named = _group_specs(groups)
    names = (*named, REMAINDER)
    provenance = Provenance(
        "attention_share", model, layers=layer_ids, queries=queries, groups=named
    )

    def step(batch: Batch) -> tuple[list[np.ndarray], list[np.ndarray]]:
        rows = query_rows(queries, batch.layout, what="attention_share")
        store: dict[int, Tensor] = {}
        fwd_hooks = key_attention_hooks(
            model, batch.layout, layer_ids, rows, store, attention_of(batch)
        )
        run(model, batch, fwd_hooks, layer_ids)
        keys = torch.stack([store[layer] for layer in layer_ids]).cpu()  # [layers, batch, k]
        member = group_masks(batch.layout, named).to(torch.float64)  # [batch, groups, k]
        token_mask = batch.layout.mask("image") & image_side(batch.layout)
        return (
            list(torch.einsum("lbk,bgk->blg", keys, member.cpu()).numpy()),
            [keys[:, b, token_mask[b].cpu()].numpy() for b in range(len(batch))],
        )

    # batches read lazily: a generator keeps one in memory
    outputs = map_batches(step, batches, provenance, progress=progress, desc="attention_share")
    masses = [m for part, _ in outputs for m in part]  # per prompt [layers, groups]
    tokens = [t for _, part in outputs for t in part]  # per prompt [layers, n_image_tokens]
    mass_per_prompt = np.stack(masses)  # [prompts, layers, groups]
    mass = mass_per_prompt.mean(axis=0)
    total = mass.sum(axis=1, keepdims=True)
    per_token = None
    if len({t.shape[1] for t in tokens}) == 1:
        per_token = np.stack(tokens).mean(axis=0) / total
    return AttentionShareResult(
        layers=layer_ids,
        groups=names,
        share=mass / total,
        mass=mass,
        per_prompt=mass_per_prompt / mass_per_prompt.sum(axis=2, keepdims=True),
        per_token=per_token,
        n_prompts=len(masses),
        meta=provenance.meta(),
    )


def group_masks(
    layout: TokenLayout, named: Mapping[str, PositionSpec]
) -> Bool[Tensor, "batch groups pos"]:
    """Disjoint membership masks of the image-side positions: the `named` groups in order (each
    position joins the first group that claims it), then ``"image"`` for the rest.

    Example:
        >>> import torch
        >>> from vlm_lens.layout import TokenLayout, TokenSpec
        >>> spec = TokenSpec(image_token_ids=frozenset({9}))
        >>> layout = TokenLayout.from_input_ids(torch.tensor([[5, 9, 9, 9, 6, 7]]), spec)
        >>> group_masks(layout, {"gate": "gate", "first": image_token(0)})[0].int().tolist()
        [[0, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0]]
    """
    side = image_side(layout)
    claimed = torch.zeros_like(side)
    out = []
    for spec in named.values():
        mask = select(spec, layout) & side & ~claimed
        claimed |= mask
        out.append(mask)
    out.append(side & ~claimed)
    return torch.stack(out, dim=1)


def _group_specs(groups: Mapping[str, PositionSpec | None] | None) -> dict[str, PositionSpec]:
    merged: dict[str, PositionSpec | None] = dict(DEFAULT_GROUPS)
    for name, spec in (groups or {}).items():
        if name == REMAINDER:
            raise ValueError(
                f"{REMAINDER!r} is the remainder group (internal image tokens); name yours "
                "differently"
            )
        merged[name] = spec
    return {name: spec for name, spec in merged.items() if spec is not None}

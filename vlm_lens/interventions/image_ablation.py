"""Ablation of a subset of image tokens in the image features entering the decoder.

Neo et al. (2024) mean-ablate the image tokens at an object's positions and watch object
identification fail; `ablate_image_tokens` does this for any family through the
``hook_image_embeds`` hook point (projector output for LLaVA/Janus, VQ-code embeddings for
Chameleon/Emu3), before the decoder sees the image.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.positions import random_image_tokens
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("llava")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    >>> ablation = ablate_image_tokens(batch, random_image_tokens(4, seed=0), value="mean")
    >>> logits = model.run_with_hooks(batch, fwd_hooks=ablation)
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens import hooks as hook_names
from vlm_lens.batch import Batch, attention_of, layout_of
from vlm_lens.engine.intervention import Intervention, first_true
from vlm_lens.errors import VLMInputError
from vlm_lens.layout import TokenLayout
from vlm_lens.positions import PositionSpec, describe, select


def ablate_image_tokens(
    batch: Batch | TokenLayout,
    tokens: PositionSpec = "image",
    *,
    value: Literal["zero", "mean"] | Float[Tensor, " d_model"] = "zero",
) -> Intervention:
    """Replace the image features of the selected image positions.

    Args:
        batch: the batch the hook will run on (or its layout).
        tokens: image-span positions to ablate (roles ``image``/``image_row_end``, or a subset
            such as `vlm_lens.positions.random_image_tokens`); other positions are refused.
        value: ``"zero"``; ``"mean"``, the mean feature over the image tokens of the same
            sequence (before ablation); or a ``[d_model]`` vector, e.g. a dataset mean.

    Returns:
        An `Intervention` on ``hook_image_embeds``.

    Raises:
        VLMInputError: if a selected position is not in an image span, or nothing is selected.

    Example:
        >>> ablation = ablate_image_tokens(batch, image_token(0), value="zero")  # doctest: +SKIP
        >>> logits = model.run_with_hooks(batch, fwd_hooks=ablation)  # doctest: +SKIP
    """
    layout = layout_of(batch)
    mask = select(tokens, layout)
    span = layout.mask("image") | layout.mask("image_row_end")
    outside = mask & ~span
    if outside.any():
        b, p = (int(x) for x in outside.nonzero()[0])
        raise VLMInputError(
            f"{describe(tokens)!r} selects position {p} of sequence {b} "
            f"(roles {layout.roles_at(b, p)}), which is not an image token; image features "
            "exist only for the image span (use knockout or patch for other positions)"
        )
    if not mask.any():
        raise VLMInputError(f"{describe(tokens)!r} selects no image token in this batch")
    if isinstance(value, str) and value not in ("zero", "mean"):
        raise ValueError(f"value must be 'zero', 'mean' or a [d_model] tensor, got {value!r}")
    # Feature row of a selected position: its index among the sequence's span positions when
    # row ends carry features (Emu3's are placeholders), else among its image positions (a
    # row-end token of its own, Pixtral's [IMG_BREAK], has none); the features' width tells.
    image = layout.mask("image")
    by_span = [m[s].nonzero().flatten() for m, s in zip(mask, span, strict=True)]
    by_image = [m[i].nonzero().flatten() for m, i in zip(mask, image, strict=True)]
    mean_span = [image[b][span[b]].nonzero().flatten() for b in range(len(by_span))]
    mean_image = [torch.arange(int(i.sum())) for i in image]
    row_end_selected = bool((mask & layout.mask("image_row_end")).any())

    def ablate(features: Float[Tensor, "batch n d_model"], hook: Any) -> Tensor:
        if features.shape[0] != len(by_span):
            raise VLMInputError(
                f"{hook.name}: the ablation was built for {len(by_span)} sequences but the "
                f"model ran {features.shape[0]}; build it from the batch you run"
            )
        rows, image_rows = by_span, mean_span
        if features.shape[1] != int(span.sum(1).max()):  # row ends carry no features
            if row_end_selected:
                raise VLMInputError(
                    f"{describe(tokens)!r} selects image_row_end positions, which carry no "
                    "image features in this family; select image positions"
                )
            rows, image_rows = by_image, mean_image
        out = features.clone()
        for b, idx in enumerate(rows):
            idx = idx.to(features.device)
            if value == "zero":
                out[b, idx] = 0.0
            elif isinstance(value, str):
                out[b, idx] = features[b, image_rows[b].to(features.device)].mean(dim=0)
            else:
                out[b, idx] = value.to(features.device, features.dtype)
        return out

    return Intervention(
        [(hook_names.IMAGE_EMBEDS, ablate)],
        attention_of(batch).earliest_affected(first_true(mask, layout.shape[1])),
    )

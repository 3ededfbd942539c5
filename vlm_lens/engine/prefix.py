"""`PrefixCache`: the KV cache of a prompt's first positions, reused by many suffix passes.

An intervention whose earliest affected position is ``e`` (`Intervention.earliest`) leaves
positions ``0 .. e-1`` exactly as in the clean run. So a sweep of ``k`` such conditions runs the
clean prefix once (`HookedVLM.prefix_cache`, keeping Hugging Face's ``DynamicCache`` of every
layer's keys and values) and then only positions ``e ..`` per condition
(`HookedVLM.run_suffix`), instead of ``k`` full forward passes. The prefix must hold every image
(the image inputs are encoded in the prefix pass), so ``upto`` lies after the last image token,
and it may not cut through a bidirectional block of the batch's `AttentionStructure` (the
prefix's keys would then depend on positions after it). The passes take the position ids the
adapter gives for the full prompt (`VLMAdapter.position_ids`), sliced along their last axis, so
multi-axis rotary positions (``[3, batch, pos]``) carry over.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("chameleon")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    >>> gate = int(batch.layout.positions("gate")[0])
    >>> prefix = model.prefix_cache(batch, upto=gate)
    >>> suffix = model.run_suffix(prefix)  # logits of positions gate..end
    >>> suffix.shape[1] == batch.input_ids.shape[1] - gate
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vlm_lens.batch import Batch, attention_of
from vlm_lens.errors import VLMInputError


@dataclass
class PrefixCache:
    """The clean KV cache of positions ``0 .. upto-1`` of a batch.

    Attributes:
        batch: the batch it was computed on.
        upto: number of cached positions; suffix passes compute positions ``upto ..``.
        past_key_values: Hugging Face's ``DynamicCache`` (cropped back to `upto` after every
            suffix pass, so passes never see each other's keys).
        position_ids: the position ids of the full prompt (`VLMAdapter.position_ids`), or
            ``None`` for ``arange``; suffix passes take ``position_ids[..., upto:]``.
    """

    batch: Batch
    upto: int
    past_key_values: Any
    position_ids: Tensor | None = None

    def restore(self) -> None:
        """Drop every cached position after `upto` (what a suffix pass appended)."""
        extra = int(self.past_key_values.get_seq_length()) - self.upto
        if extra > 0:
            self.past_key_values.crop(-extra)  # negative: remove that many (all HF 5.x)

    @property
    def suffix_length(self) -> int:
        """Number of positions each suffix pass computes."""
        return int(self.batch.input_ids.shape[1]) - self.upto


def image_positions_end(batch: Batch) -> int:
    """One past the last position that receives image features (image tokens, row ends); 0
    for a batch without images."""
    layout = batch.layout
    span = layout.mask("image") | layout.mask("image_row_end")
    if not bool(span.any()):
        return 0
    return int(span.nonzero()[:, 1].max()) + 1


def reusable_from(batch: Batch) -> int:
    """The smallest `upto` from which every prefix up to ``pos - 1`` is reusable: past every
    image token and past every bidirectional block (`AttentionStructure`) that ends after the
    images. Equal to `image_positions_end` for causal batches."""
    end = image_positions_end(batch)
    for _, _, last in attention_of(batch).blocks():
        end = max(end, last + 1)
    return end


def check_upto(batch: Batch, upto: int) -> None:
    """Raise unless ``image end <= upto <= pos - 1`` (a prefix with every image, and at least
    one position left to compute) and `upto` cuts through no bidirectional block of the
    batch's `AttentionStructure`.

    Raises:
        VLMInputError: naming the problem (images, no suffix left, or the block cut through)
            and the fix.
    """
    length = int(batch.input_ids.shape[1])
    end = image_positions_end(batch)
    if not end <= upto < length:
        raise VLMInputError(
            f"upto={upto} is not a reusable prefix of this batch ({length} positions, images end "
            f"at {end}): the prefix must contain every image token (upto >= {end}) and leave at "
            f"least one position (upto <= {length - 1}); an intervention that changes image "
            "positions cannot reuse a prefix, run it in full"
        )
    cut = attention_of(batch).cut_blocks(upto)
    if cut:
        b, first, last = cut[0]
        raise VLMInputError(
            f"upto={upto} cuts through a bidirectional attention block of this batch (sequence "
            f"{b}, positions {first}..{last} attend to each other both ways), so the prefix's "
            f"keys would depend on positions after it; use upto <= {first} or upto >= "
            f"{last + 1} (every position from {reusable_from(batch)} on is reusable), or run "
            "the intervention in full"
        )


def prefix_inputs(batch: Batch, upto: int, position_ids: Tensor | None = None) -> dict[str, Any]:
    """Model inputs of the prefix pass: positions ``0 .. upto-1`` and every image input.

    Args:
        batch: the batch.
        upto: number of prefix positions.
        position_ids: the full prompt's position ids (`VLMAdapter.position_ids`, any leading
            axes: ``[1, pos]``, ``[3, batch, pos]``...); ``None`` for ``arange``.
    """
    inputs = dict(batch.inputs)
    inputs["input_ids"] = batch.input_ids[:, :upto]
    if batch.attention_mask is not None:
        inputs["attention_mask"] = batch.attention_mask[:, :upto]
    inputs["position_ids"] = _positions(batch, position_ids)[..., :upto]
    return inputs


def suffix_inputs(
    batch: Batch, upto: int, image_keys: tuple[str, ...], position_ids: Tensor | None = None
) -> dict[str, Any]:
    """Model inputs of a suffix pass: ids and positions ``upto ..``, the full attention mask
    (it spans the cached prefix), no image inputs (the images are in the prefix).

    Leaving out per-position image inputs (Gemma 3's ``token_type_ids``, which make each
    image's tokens one bidirectional block) is exact only because `check_upto` keeps every image
    token, so every such block, in the prefix: the suffix holds text only, whose mask is
    causal, and the cached image keys were computed with the blocks.

    Args:
        batch: the batch.
        upto: number of cached prefix positions.
        image_keys: input keys that carry the image (left out).
        position_ids: the full prompt's position ids, as in `prefix_inputs`.
    """
    ids: Tensor = batch.input_ids
    inputs: dict[str, Any] = {
        k: v for k, v in batch.inputs.items() if k not in image_keys and k != "input_ids"
    }
    inputs["input_ids"] = ids[:, upto:]
    inputs["position_ids"] = _positions(batch, position_ids)[..., upto:]
    return inputs


def _positions(batch: Batch, position_ids: Tensor | None) -> Tensor:
    ids = batch.input_ids
    if position_ids is None:
        return torch.arange(ids.shape[1], device=ids.device)[None]
    if position_ids.shape[-1] != ids.shape[1]:
        raise VLMInputError(
            f"position_ids have {position_ids.shape[-1]} positions on their last axis but the "
            f"batch has {ids.shape[1]}; the adapter's position_ids must cover the full prompt"
        )
    return position_ids

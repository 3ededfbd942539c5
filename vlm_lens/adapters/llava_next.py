"""LLaVA-Next (``LlavaNextForConditionalGeneration``) and LLaVA-OneVision (a LLaVA-Next delta).

"anyres": each image is a base crop and a grid of tiles; the processor writes one placeholder
span per image: the base crop's tokens, then the unpadded tile grid row by row, each row ended
by the learned ``image_newline`` vector (role ``image_row_end``). Those positions hold the
placeholder id, so the roles need ``image_sizes`` (`refine_layout`; `HookedVLM.layout` refuses
ids alone). The gate is the first token after the span (text, as in LLaVA-1.5). ``pixel_values``
is ``[images, crops, 3, H, W]``: one row per image. OneVision writes only the base crop and one
``image_newline`` per image in a prompt with several images. TransformerLens 4.3 bridges both.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("llava_onevision")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> batch = model.prepare(images=sample_image(size=(16, 24)), text=tiny.prompt)
    >>> batch.layout.counts()["image_row_end"]
    [2]
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    unpad_image,
)

from vlm_lens.adapters.base import VLMAdapter
from vlm_lens.layout import TokenLayout, TokenSpec
from vlm_lens.processors import images_only_processor_class


class LlavaNextAdapter(VLMAdapter):
    """LLaVA-Next (1.6) models; `LlavaOnevisionAdapter` adds OneVision's deltas."""

    family = "llava_next"
    architectures = ("LlavaNextForConditionalGeneration",)
    image_input_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_sizes")
    layout_needs_image_inputs = True

    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        config: Any = model.config
        bos = getattr(config.text_config, "bos_token_id", None)
        return TokenSpec(
            image_token_ids=frozenset({int(config.image_token_id)}),
            bos_token_ids=frozenset() if bos is None else frozenset({int(bos)}),
            placeholder_token_id=int(config.image_token_id),
        )

    def image_rows(self, size: Any, tiled: bool) -> tuple[int, int, int]:
        """``(base tokens, rows, cols)`` of one image of `size` ``(H, W)``: the base crop,
        then `rows` rows of `cols` tokens each ended by ``image_newline`` (one row-end token
        alone, ``rows = cols = 0``, when the image is not `tiled`)."""
        vision, side = self.config.vision_config, self.config.vision_config.image_size
        n = side // vision.patch_size
        if not tiled:
            return n * n, 0, 0
        grid = get_anyres_image_grid_shape(size, self.config.image_grid_pinpoints, side)
        rows, cols = unpad_image(torch.empty(0, grid[0] * n, grid[1] * n), size).shape[1:]
        return n * n, *self._scaled(int(rows), int(cols), n)

    def _scaled(self, rows: int, cols: int, n: int) -> tuple[int, int]:
        del n  # OneVision shrinks grids of more than anyres_max_N crops of n x n tokens
        return rows, cols

    def _tiled(self, inputs: Mapping[str, Any]) -> list[bool]:
        return [True] * len(inputs["image_sizes"])

    def _images(self, inputs: Mapping[str, Any]) -> list[tuple[int, list[int], Any]]:
        out = []
        for size, tiled in zip(inputs["image_sizes"].tolist(), self._tiled(inputs), strict=True):
            base, rows, cols = self.image_rows(size, tiled)
            ends = [base + r * (cols + 1) + cols for r in range(rows)] if tiled else [base]
            grid = (rows, cols) if tiled else None
            out.append((base + rows * (cols + 1) + (not tiled), ends, grid))
        return out

    def refine_layout(self, layout: TokenLayout, inputs: Mapping[str, Any]) -> TokenLayout:
        images, rows = self._images(inputs), []
        for spans in layout.spans:
            total, taken = sum(s.length for s in spans), []
            while images and total > 0:
                taken.append(images.pop(0))
                total -= taken[-1][0]
            rows.append(taken)
        try:
            return layout.with_images(rows)
        except ValueError:  # placeholders that do not match: check_inputs says so
            return layout

    def expected_tokens_per_image(self, inputs: Mapping[str, Any], image: int) -> int | None:
        images = self._images(inputs)
        return images[image][0] if image < len(images) else None


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision: a SigLIP tower, grids shrunk to at most ``anyres_max_N`` crops."""

    family = "llava_onevision"
    architectures = ("LlavaOnevisionForConditionalGeneration",)
    image_input_keys = ("pixel_values", "image_sizes", "batch_num_images")

    def _scaled(self, rows: int, cols: int, n: int) -> tuple[int, int]:
        aspect = getattr(self.config, "vision_aspect_ratio", "anyres_max_9")
        most = int(aspect.removeprefix("anyres_max_"))
        ratio = math.sqrt(rows * cols / (most * n**2))
        return (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)

    def _tiled(self, inputs: Mapping[str, Any]) -> list[bool]:
        counts = inputs.get("batch_num_images")
        if counts is None:
            return super()._tiled(inputs)
        return [int(n) == 1 for n in counts for _ in range(int(n))]

    def processor_images(self, images: list[list[Any]]) -> Any:
        """Per prompt, so that a prompt with several images gets OneVision's multi-image mode."""
        return [group for group in images if group]

    @classmethod
    def load_processor(cls, name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """``LlavaOnevisionProcessor`` without its video processor (which needs torchvision)."""
        from transformers import LlavaOnevisionProcessor

        return images_only_processor_class(LlavaOnevisionProcessor).from_pretrained(
            name_or_path, **kwargs
        )

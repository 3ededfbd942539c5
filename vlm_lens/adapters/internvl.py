"""InternVL (the Hugging Face port, ``InternVLForConditionalGeneration``; InternVL 2.5 / 3 ``-hf``).

The processor writes each image as ``<img>`` + ``<IMG_CONTEXT>`` x (``image_seq_length`` x tiles)
+ ``</img>``: one span per image, its tiles (dynamic high-resolution crops, then a thumbnail)
back to back inside it; ``</img>`` is the gate. ``pixel_values`` rows are tiles, not images, so
the image-count check counts tiles: every span must hold a whole number of tiles and the spans
together as many as ``pixel_values`` has rows. TransformerLens 4.3 has no InternVL adapter; its
LLaVA mapping fits (same ``model.language_model`` / ``lm_head`` paths) with the InternViT tower
delegated as a whole, which is what its Mistral 3 adapter does.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny
    >>> model = HookedVLM.from_hf(build_tiny("internvl").model)
    >>> model.family, model.adapter.tile_tokens
    ('internvl', 4)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn
from transformer_lens.model_bridge.supported_architectures.mistral3 import (
    Mistral3ArchitectureAdapter,
)

from vlm_lens.adapters.base import VLMAdapter
from vlm_lens.layout import TokenLayout, TokenSpec
from vlm_lens.processors import images_only_processor_class


class InternVLAdapter(VLMAdapter):
    """InternVL 2.5 / 3 in transformers' native port."""

    family = "internvl"
    architectures = ("InternVLForConditionalGeneration",)
    tl_architecture_adapter: ClassVar[type | None] = Mistral3ArchitectureAdapter
    default_placeholder = "<IMG_CONTEXT>"
    pixel_rows = "tile"

    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        config: Any = model.config
        placeholder = int(config.image_token_id)
        return TokenSpec(
            image_token_ids=frozenset({placeholder}),
            image_start_token_ids=self.ids(self.tokenizer_token("start_image_token") or "<img>"),
            image_end_token_ids=self.ids(self.tokenizer_token("end_image_token") or "</img>"),
            placeholder_token_id=placeholder,
            delimited=True,  # <img> ... </img> around every image, even adjacent ones
        )

    @property
    def tile_tokens(self) -> int:
        """Placeholder positions per tile (``config.image_seq_length``)."""
        return int(self.config.image_seq_length)

    def feature_groups(self, layout: TokenLayout) -> list[int]:
        """Tiles per sequence: ``get_image_features`` returns one row of features per tile."""
        return [sum(span.length // self.tile_tokens for span in row) for row in layout.spans]

    def count_images(self, inputs: Mapping[str, Any]) -> int:
        """Tiles, not images: the rows of ``pixel_values`` (see `check_inputs`)."""
        pixel_values = inputs.get("pixel_values")
        return 0 if pixel_values is None else int(pixel_values.shape[0])

    def span_tile_positions(self, input_ids: Tensor, row: int, span: Any) -> int:
        """The whole span: ``<img>`` and ``</img>`` lie outside it."""
        del input_ids, row
        return int(span.length)

    @classmethod
    def load_processor(cls, name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """``InternVLProcessor`` without its video processor (which needs torchvision)."""
        from transformers import InternVLProcessor

        return images_only_processor_class(InternVLProcessor).from_pretrained(
            name_or_path, **kwargs
        )

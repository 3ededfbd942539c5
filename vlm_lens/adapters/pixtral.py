"""Pixtral (a LLaVA with a Pixtral tower) and Mistral 3 (the same tower, then a patch merger).

The processor writes each image as rows of ``[IMG]``, each row but the last closed by
``[IMG_BREAK]`` (``image_row_end``, inside the span) and the last by ``[IMG_END]`` (the gate,
also ``image_end``). Images keep their aspect ratio: an ``H x W`` image (after resizing) gives
``H // s`` rows of ``W // s`` tokens, ``s`` = patch size x ``spatial_merge_size`` (Mistral 3).
The Pixtral-tower LLaVA is bridged by TransformerLens' Mistral 3 adapter (the LLaVA mapping with
the tower delegated as a whole); TransformerLens' LLaVA adapter expects a CLIP tower.

Example:
    >>> from vlm_lens.testing import build_tiny
    >>> from vlm_lens import HookedVLM
    >>> model = HookedVLM.from_hf(build_tiny("pixtral").model)
    >>> model.family, sorted(model.adapter.token_spec.row_end_token_ids)
    ('pixtral', [12])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn
from transformer_lens.model_bridge.supported_architectures.mistral3 import (
    Mistral3ArchitectureAdapter,
)

from vlm_lens.adapters.base import VLMAdapter
from vlm_lens.layout import TokenSpec
from vlm_lens.processors import pixtral_processor_class

# Mistral's tokenizers (Tekken, v3) put these control tokens at fixed ids; used without one.
_MISTRAL_IDS = {"[IMG]": 10, "[IMG_BREAK]": 12, "[IMG_END]": 13}


class PixtralAdapter(VLMAdapter):
    """Pixtral-12B (``LlavaForConditionalGeneration`` with a ``"pixtral"`` vision tower)."""

    family = "pixtral"
    architectures = ("LlavaForConditionalGeneration",)
    vision_towers: ClassVar[tuple[str, ...]] = ("pixtral",)
    tl_architecture: ClassVar[str | None] = "LlavaForConditionalGeneration[pixtral]"
    tl_architecture_adapter: ClassVar[type | None] = Mistral3ArchitectureAdapter
    image_input_keys = ("pixel_values", "image_sizes")
    default_placeholder = "[IMG]"

    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        config: Any = model.config
        placeholder = int(config.image_token_id)
        bos = getattr(config.text_config, "bos_token_id", None)
        return TokenSpec(
            image_token_ids=frozenset({placeholder}),
            row_end_token_ids=self._marker("image_break_token", "[IMG_BREAK]", placeholder),
            image_end_token_ids=self._marker("image_end_token", "[IMG_END]", placeholder),
            bos_token_ids=frozenset() if bos is None else frozenset({int(bos)}),
            placeholder_token_id=placeholder,
        )

    def _marker(self, attribute: str, default: str, placeholder: int) -> frozenset[int]:
        found = self.ids(getattr(self.processor, attribute, None) or default)
        if found or self.tokenizer is not None or placeholder != _MISTRAL_IDS["[IMG]"]:
            return found
        return frozenset({_MISTRAL_IDS[default]})

    def expected_tokens_per_image(self, inputs: Mapping[str, Any], image: int) -> int | None:
        sizes = inputs.get("image_sizes")
        if sizes is None or image >= len(sizes):
            return None
        step = int(self.config.vision_config.patch_size) * getattr(
            self.config, "spatial_merge_size", 1
        )
        rows, cols = (int(v) // step for v in sizes[image])
        return rows * cols + rows - 1  # the last row ends with [IMG_END], after the span

    @classmethod
    def load_processor(cls, name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
        return pixtral_processor_class().from_pretrained(name_or_path, **kwargs)


class Mistral3Adapter(PixtralAdapter):
    """Mistral Small 3.x (``Mistral3ForConditionalGeneration``); TransformerLens bridges it."""

    family = "mistral3"
    architectures = ("Mistral3ForConditionalGeneration",)
    vision_towers = ()
    tl_architecture = None
    tl_architecture_adapter = None

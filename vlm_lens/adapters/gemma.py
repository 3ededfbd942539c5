"""Gemma 3 (``Gemma3ForConditionalGeneration``): a SigLIP tower, a pooling projector and a
Gemma 3 decoder with sliding-window and full-attention layers.

The processor writes each image as ``<start_of_image>``, ``mm_tokens_per_image``
``<image_soft_token>`` and ``<end_of_image>`` (the gate, also ``image_end``). The soft tokens of
one image attend to each other both ways (one bidirectional block per image span, HF's
``token_type_ids``); the sliding window of the sliding layers applies on top.
TransformerLens 4.3 bridges Gemma 3 natively.

Example:
    >>> from vlm_lens.testing import build_tiny
    >>> from vlm_lens import HookedVLM
    >>> model = HookedVLM.from_hf(build_tiny("gemma3").model)
    >>> model.family, model.adapter.token_spec.tokens_per_image
    ('gemma3', 4)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from vlm_lens.adapters.base import VLMAdapter
from vlm_lens.attention_structure import AttentionStructure
from vlm_lens.layout import TokenLayout, TokenSpec


class Gemma3Adapter(VLMAdapter):
    """Gemma 3 (``Gemma3ForConditionalGeneration``)."""

    family = "gemma3"
    architectures = ("Gemma3ForConditionalGeneration",)
    image_input_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "token_type_ids")
    default_placeholder = "<start_of_image>"

    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        config: Any = model.config
        placeholder = int(config.image_token_index)
        bos = getattr(config.text_config, "bos_token_id", None)
        return TokenSpec(
            image_token_ids=frozenset({placeholder}),
            image_start_token_ids=frozenset({int(config.boi_token_index)}),
            image_end_token_ids=frozenset({int(config.eoi_token_index)}),
            bos_token_ids=frozenset() if bos is None else frozenset({int(bos)}),
            tokens_per_image=int(config.mm_tokens_per_image),
            placeholder_token_id=placeholder,
            delimited=True,
        )

    def processor_images(self, images: list[list[Any]]) -> Any:
        return images  # Gemma3Processor takes one list of images per prompt

    @property
    def image_placeholder(self) -> str:
        return getattr(self.processor, "boi_token", None) or self.default_placeholder

    def attention_structure(
        self, layout: TokenLayout, inputs: Mapping[str, Any] | None = None
    ) -> AttentionStructure:
        del inputs
        spans = [[(s.start, s.end + 1) for s in row] for row in layout.spans]
        return AttentionStructure.from_spans(*layout.shape, spans)

"""LLaVA: a CLIP or SigLIP tower and a projector feed a Llama-like decoder (Llama, Mistral, Qwen2).

There is no end-of-image token: the gate is the first prompt token after the placeholders, and
it is also a ``text`` token. Adjacent images are split by the fixed tokens-per-image count.
TransformerLens 4.3 bridges LLaVA natively.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vlm_lens.adapters.base import VLMAdapter
from vlm_lens.layout import TokenSpec


class LlavaAdapter(VLMAdapter):
    """LLaVA 1.5-style models (``LlavaForConditionalGeneration``)."""

    family = "llava"
    architectures = ("LlavaForConditionalGeneration",)
    vision_towers = ("clip_vision_model", "siglip_vision_model")  # a Pixtral tower: PixtralAdapter

    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        config: Any = model.config  # a transformers config: attributes per model type
        placeholder = int(config.image_token_id)
        vision = config.vision_config
        n_patches = (vision.image_size // vision.patch_size) ** 2
        extra = 1 if config.vision_feature_select_strategy == "full" else 0
        bos = getattr(config.text_config, "bos_token_id", None)
        return TokenSpec(
            image_token_ids=frozenset({placeholder}),
            bos_token_ids=frozenset() if bos is None else frozenset({int(bos)}),
            tokens_per_image=n_patches + extra,
            placeholder_token_id=placeholder,
        )

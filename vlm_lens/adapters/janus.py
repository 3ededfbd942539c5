"""Janus: a SigLIP-like tower and an MLP aligner feed a Llama decoder (understanding path).

The span is ``<begin_of_image>`` + placeholders + ``<end_of_image>`` (the gate, also
``image_end``). TransformerLens 4.3 has no Janus adapter; `JanusArchitectureAdapter` reuses its
LLaVA adapter (same language-model paths) with the Janus vision modules wrapped opaquely.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformer_lens.model_bridge.generalized_components import VisionProjectionBridge
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.supported_architectures.llava import LlavaArchitectureAdapter

from vlm_lens.adapters.base import VLMAdapter
from vlm_lens.layout import TokenSpec


class JanusArchitectureAdapter(LlavaArchitectureAdapter):
    """TransformerLens adapter for ``JanusForConditionalGeneration``.

    The vision tower gets ``vision_encoder.hook_in``/``hook_out`` only (TL's SigLIP bridge
    expects module names Janus does not use); the aligner is ``vision_projector``. The
    image-generation modules are wrapped opaquely and are not called by the text forward.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        mapping = self.component_mapping
        assert mapping is not None, "LlavaArchitectureAdapter sets component_mapping"
        mapping["vision_encoder"] = GeneralizedComponent(name="model.vision_model", config=self.cfg)
        mapping["vision_projector"] = VisionProjectionBridge(name="model.aligner")
        for key, path in (
            ("gen_embed", "model.generation_embeddings"),
            ("gen_aligner", "model.generation_aligner"),
            ("gen_head", "model.generation_head"),
        ):
            mapping[key] = GeneralizedComponent(name=path, config=self.cfg)


class JanusAdapter(VLMAdapter):
    """Janus / Janus-Pro (DeepSeek), understanding path."""

    family = "janus"
    architectures = ("JanusForConditionalGeneration",)
    tl_architecture_adapter = JanusArchitectureAdapter
    default_placeholder = "<image_placeholder>"

    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        config: Any = model.config
        placeholder = int(config.image_token_id)
        return TokenSpec(
            image_token_ids=frozenset({placeholder}),
            image_start_token_ids=self.ids(self.tokenizer_token("boi_token") or "<begin_of_image>"),
            image_end_token_ids=self.ids(self.tokenizer_token("eoi_token") or "<end_of_image>"),
            bos_token_ids=frozenset({int(config.text_config.bos_token_id)}),
            tokens_per_image=int(config.vision_config.num_image_tokens),
            placeholder_token_id=placeholder,
            delimited=True,  # <begin_of_image> ... <end_of_image>, even when ids are unknown
        )

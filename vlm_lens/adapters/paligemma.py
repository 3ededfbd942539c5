"""PaliGemma 1 and 2 (``PaliGemmaForConditionalGeneration``): images first, then ``<bos>`` (the
gate, also the sequence's BOS), the prompt and ``"\\n"``; a prefix-LM.

The processor writes ``<image>`` x ``image_seq_length`` per image and ``<bos>`` after the last
one, so images have a fixed length (adjacent ones are split by it) and no delimiters. Attention
is bidirectional over the prefix (``token_type_ids == 0``: images and prompt) and causal over
the suffix (``token_type_ids == 1``, and every generated token): `attention_structure` is HF's
``block_sequence_ids``. Positions count from 1 (`position_ids`). TransformerLens 4.3 has no
PaliGemma adapter: `PaliGemmaArchitectureAdapter` bridges the Gemma / Gemma 2 decoder
(``model.language_model``; HF's own norms apply Gemma's ``1 + w``, its embedding the
``sqrt(d_model)`` scale; Gemma 2's final-logit soft-capping is applied to the logit lens).

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("paligemma")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    >>> batch.layout.roles_at(0, 16), batch.attention.blocks()
    (('bos', 'gate'), [(0, 0, 48)])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
from transformer_lens.model_bridge.generalized_components import (
    BlockBridge,
    EmbeddingBridge,
    LinearBridge,
    PositionEmbeddingsAttentionBridge,
    RMSNormalizationBridge,
    RotaryEmbeddingBridge,
    UnembeddingBridge,
)
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

from vlm_lens.adapters.base import VLMAdapter
from vlm_lens.attention_structure import AttentionStructure
from vlm_lens.errors import VLMInputError
from vlm_lens.layout import TokenLayout, TokenSpec

_LM = "model.language_model"


class PaliGemmaArchitectureAdapter(ArchitectureAdapter):
    """TransformerLens adapter for PaliGemma's Gemma (1) or Gemma 2 decoder."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.cfg.is_multimodal = True
        self._set_rms_rotary_defaults()
        self.cfg.rmsnorm_uses_offset = True
        self.cfg.attn_implementation = "eager"
        self.cfg.default_prepend_bos = False
        self.weight_processing_conversions = {**self._qkvo_weight_conversions()}
        self.component_mapping = self._mapping(gemma2=False)

    def _mapping(self, gemma2: bool) -> dict[str, Any]:
        def norm(name: str) -> RMSNormalizationBridge:
            return RMSNormalizationBridge(name=name, config=self.cfg)

        norms = {"ln1": norm("input_layernorm"), "ln2": norm("post_attention_layernorm")}
        if gemma2:  # a norm before and after each branch
            norms = {
                "ln1": norm("input_layernorm"),
                "ln1_post": norm("post_attention_layernorm"),
                "ln2": norm("pre_feedforward_layernorm"),
                "ln2_post": norm("post_feedforward_layernorm"),
            }
        attn = PositionEmbeddingsAttentionBridge(
            name="self_attn",
            config=self.cfg,
            submodules={k: LinearBridge(name=f"{k}_proj") for k in "qkvo"},
            requires_attention_mask=True,
            requires_position_embeddings=True,
        )
        return {
            "vision_encoder": GeneralizedComponent(name="model.vision_tower", config=self.cfg),
            "embed": EmbeddingBridge(name=f"{_LM}.embed_tokens"),
            "rotary_emb": RotaryEmbeddingBridge(name=f"{_LM}.rotary_emb"),
            "blocks": BlockBridge(
                name=f"{_LM}.layers",
                submodules={**norms, "attn": attn, "mlp": self._gated_mlp()},
            ),
            "ln_final": norm(f"{_LM}.norm"),
            "unembed": UnembeddingBridge(name="lm_head", config=self.cfg),
        }

    def prepare_model(self, hf_model: Any) -> None:
        """Gemma 2's norm layout and final-logit soft-cap, read from the text config."""
        super().prepare_model(hf_model)
        text = hf_model.config.get_text_config()
        cap = getattr(text, "final_logit_softcapping", None)  # Gemma 2
        if cap is not None:
            self.cfg.output_logits_soft_cap = float(cap)
        if text.model_type == "gemma2":
            self.supports_fold_ln = False
            self.component_mapping = self._mapping(gemma2=True)


class PaliGemmaAdapter(VLMAdapter):
    """PaliGemma 1 (Gemma decoder) and PaliGemma 2 (Gemma 2 decoder)."""

    family = "paligemma"
    architectures = ("PaliGemmaForConditionalGeneration",)
    tl_architecture_adapter: ClassVar[type | None] = PaliGemmaArchitectureAdapter
    image_input_keys = ("pixel_values", "token_type_ids")  # both on every call, neither in
    # suffix passes: HF reads token_type_ids only on a pass that starts the cache

    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        config: Any = model.config
        bos = config.get_text_config().bos_token_id
        return TokenSpec(
            image_token_ids=frozenset({int(config.image_token_id)}),
            bos_token_ids=frozenset() if bos is None else frozenset({int(bos)}),
            tokens_per_image=int(config.text_config.num_image_tokens),
            placeholder_token_id=int(config.image_token_id),
        )

    def position_ids(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        """``1 .. pos`` as ``[1, pos]``: HF's PaliGemma numbers positions from 1."""
        return super().position_ids(inputs) + 1

    def attention_structure(
        self, layout: TokenLayout, inputs: Mapping[str, Any] | None = None
    ) -> AttentionStructure:
        """HF's prefix-LM: one bidirectional block where ``token_type_ids == 0`` (padding
        included, as HF's ``block_sequence_ids``); causal without ``token_type_ids``. From the
        layout alone: the processor's prompt, every position in the prefix."""
        if inputs is None:
            return AttentionStructure.prefix([layout.shape[1]] * layout.shape[0], layout.shape[1])
        types = inputs.get("token_type_ids")
        if types is None or tuple(types.shape) != tuple(layout.shape):  # else check_inputs
            return AttentionStructure.causal(*layout.shape)
        return AttentionStructure(torch.where(types == 0, 0, -1))

    def check_inputs(self, inputs: Mapping[str, Any], layout: TokenLayout) -> None:
        """The base checks, then ``token_type_ids`` of the shape of ``input_ids``."""
        super().check_inputs(inputs, layout)
        types = inputs.get("token_type_ids")
        if types is not None and tuple(types.shape) != tuple(layout.shape):
            raise VLMInputError(
                f"token_type_ids have shape {tuple(types.shape)} but input_ids "
                f"{tuple(layout.shape)}; build the inputs with model.prepare"
            )

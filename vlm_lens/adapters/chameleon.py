"""Chameleon: VQ image codes enter as ordinary tokens; the gate is ``<eoss>`` (end of image).

TransformerLens 4.3 has no Chameleon adapter, so this file also defines and registers one
(`ChameleonArchitectureAdapter`): a Llama-like decoder with per-head q/k LayerNorm and an
optional ``swin_norm`` post-norm layout, whose output logits mask the image-code columns as
Hugging Face does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
from transformer_lens.model_bridge.generalized_components import (
    BlockBridge,
    EmbeddingBridge,
    LinearBridge,
    NormalizationBridge,
    PositionEmbeddingsAttentionBridge,
    RMSNormalizationBridge,
    RotaryEmbeddingBridge,
    UnembeddingBridge,
)

from vlm_lens.adapters.base import VLMAdapter
from vlm_lens.layout import TokenSpec


class ChameleonArchitectureAdapter(ArchitectureAdapter):
    """TransformerLens adapter for ``ChameleonForConditionalGeneration``'s language model.

    The per-head q/k norms are ``ChameleonLayerNorm`` (statistics over ``d_head``, affine
    parameters of shape ``(n_heads, d_head)``); the bridge applies them on ``[b, pos, head,
    d_head]`` before RoPE, as Hugging Face does. With ``swin_norm=True`` the block norms sit on
    the branch outputs (``ln1_post``/``ln2_post``), and folding them is disabled. The VQ
    tokenizer (``model.vqmodel``) is left unmapped: it turns pixels into token ids.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.cfg.is_multimodal = True
        self._set_rms_rotary_defaults()
        self.cfg.attn_implementation = "eager"
        self.weight_processing_conversions = {**self._qkvo_weight_conversions()}
        self._image_token_ids: list[int] = []
        self.component_mapping = self._mapping(swin_norm=False)

    def _qk_norm(self, name: str) -> NormalizationBridge:
        return NormalizationBridge(
            name=name, config=self.cfg, uses_rms_norm=False, use_native_layernorm_autograd=True
        )

    def _attention(self) -> PositionEmbeddingsAttentionBridge:
        return PositionEmbeddingsAttentionBridge(
            name="self_attn",
            config=self.cfg,
            submodules={
                "q": LinearBridge(name="q_proj"),
                "k": LinearBridge(name="k_proj"),
                "v": LinearBridge(name="v_proj"),
                "o": LinearBridge(name="o_proj"),
                "q_norm": self._qk_norm("q_norm"),
                "k_norm": self._qk_norm("k_norm"),
            },
            requires_attention_mask=True,
            requires_position_embeddings=True,
        )

    def _mapping(self, swin_norm: bool) -> dict[str, Any]:
        suffix = "_post" if swin_norm else ""
        norms = {
            f"ln1{suffix}": RMSNormalizationBridge(name="input_layernorm", config=self.cfg),
            f"ln2{suffix}": RMSNormalizationBridge(
                name="post_attention_layernorm", config=self.cfg
            ),
        }
        return {
            "embed": EmbeddingBridge(name="model.embed_tokens"),
            "rotary_emb": RotaryEmbeddingBridge(name="model.rotary_emb"),
            "blocks": BlockBridge(
                name="model.layers",
                submodules={**norms, "attn": self._attention(), "mlp": self._gated_mlp()},
            ),
            "ln_final": RMSNormalizationBridge(name="model.norm", config=self.cfg),
            "unembed": UnembeddingBridge(name="lm_head", config=self.cfg),
        }

    def apply_output_logits_transform(self, logits: torch.Tensor) -> torch.Tensor:
        """Mask the image-code columns as the HF forward does, so the logit lens agrees."""
        logits = super().apply_output_logits_transform(logits)
        if self._image_token_ids:
            logits = logits.clone()
            logits[..., self._image_token_ids] = torch.finfo(logits.dtype).min
        return logits

    def prepare_model(self, hf_model: Any) -> None:
        """Read what TL's config translation drops (``swin_norm``, image-code ids)."""
        super().prepare_model(hf_model)
        self._image_token_ids = list(hf_model.model.vocabulary_mapping.image_tokens)
        swin = bool(getattr(hf_model.config, "swin_norm", False))
        self.cfg.swin_norm = swin
        if swin:
            self.supports_fold_ln = False
            self.component_mapping = self._mapping(swin_norm=True)


class ChameleonAdapter(VLMAdapter):
    """Chameleon (Meta): ``<racm3:break>`` + 1024 VQ codes + ``<eoss>``; gate = ``<eoss>``."""

    family = "chameleon"
    architectures = ("ChameleonForConditionalGeneration",)
    tl_architecture_adapter = ChameleonArchitectureAdapter

    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        inner: Any = model.model  # ChameleonModel
        mapping = inner.vocabulary_mapping
        placeholder = int(mapping.image_token_id)
        return TokenSpec(
            image_token_ids=frozenset([placeholder, *mapping.image_tokens]),
            image_start_token_ids=self.ids(self.tokenizer_token("boi_token") or "<racm3:break>"),
            image_end_token_ids=self.ids(self.tokenizer_token("eoi_token") or "<eoss>"),
            bos_token_ids=_ids(self.config.bos_token_id),
            placeholder_token_id=placeholder,
            tokens_per_image=_chameleon_tokens_per_image(model),
        )


def _chameleon_tokens_per_image(model: nn.Module) -> int | None:
    config: Any = model.config
    vq = config.vq_config
    factor = 2 ** (len(vq.channel_multiplier) - 1)
    side = vq.resolution // factor
    return int(side * side) if side > 0 else None


def _ids(*values: int | None) -> frozenset[int]:
    return frozenset(int(v) for v in values if v is not None)

"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: ``<|vision_start|>`` + ``<|image_pad|>`` x t*h*w/merge^2
+ ``<|vision_end|>`` (the gate, also ``image_end``), multi-axis rotary positions.

Images are counted by the rows of ``image_grid_thw`` (``pixel_values`` holds every image's
patches in one flat tensor), and the position ids are the ``[3, batch, pos]`` ids of the HF
model's own ``get_rope_index``. TransformerLens 4.3 has no Qwen2-VL adapter and its Qwen2.5-VL
and Qwen3-VL ones need torchvision, so `QwenVLArchitectureAdapter` bridges the text decoder (Qwen2
layout: q/k/v biases; Qwen3-VL adds per-head q/k RMSNorms), with the tower wrapped opaquely.

Qwen3-VL's deepstack: HF's decoder adds features of early tower layers to the hidden states at
the image positions *between* decoder layers (after layer ``i`` for ``i < len(deepstack)``).
In hook terms ``resid_post(i)`` is the output of layer ``i`` without them (as HF's
``output_hidden_states``: ``hidden_states[i + 1]``), and ``resid_pre(i + 1)`` is the input of
layer ``i + 1`` with them, so ``resid_pre(i + 1) = resid_post(i) + deepstack_i`` at the image
positions (equal elsewhere); ``stop_at_layer=i + 1`` returns ``resid_pre(i + 1)``. A patch or
steer at ``resid_post(i)`` of an image position is followed by the deepstack add (as an HF
forward hook on layer ``i``); at ``resid_pre(i + 1)`` it replaces the sum. The deepstack
features of level ``i`` have their own hook point, ``hook_deepstack_embeds.{i}``
(`vlm_lens.hooks.deepstack_embeds`), ``[batch, n_image_tokens, d_model]`` grouped per sequence
as ``hook_image_embeds``; zeroing it removes that add. ``hook_image_embeds`` and
`vlm_lens.interventions.ablate_image_tokens` edit the decoder-input features only: the
deepstack features still reach the image positions unless their own points are edited. Prefix
reuse is exact: a prefix holds every image, so no suffix position receives deepstack features.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny
    >>> tiny = build_tiny("qwen2_vl")
    >>> HookedVLM.from_hf(tiny.model, tiny.processor).family
    'qwen2_vl'
"""

from __future__ import annotations

import os
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
from vlm_lens.layout import TokenSpec
from vlm_lens.processors import images_only_processor_class


class QwenVLArchitectureAdapter(ArchitectureAdapter):
    """TransformerLens adapter for the Qwen-VL text decoders (``model.language_model``)."""

    qk_norm: ClassVar[bool] = False

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.cfg.is_multimodal = True
        self._set_rms_rotary_defaults()
        self.cfg.attn_implementation = "eager"
        self.cfg.default_prepend_bos = False
        self.weight_processing_conversions = {**self._qkvo_weight_conversions(include_biases=True)}
        norms = (
            {n: RMSNormalizationBridge(name=n, config=self.cfg) for n in ("q_norm", "k_norm")}
            if self.qk_norm
            else {}
        )
        attn = PositionEmbeddingsAttentionBridge(
            name="self_attn",
            config=self.cfg,
            submodules={
                **{k: LinearBridge(name=f"{k}_proj") for k in "qkvo"},
                **norms,
            },
            requires_attention_mask=True,
            requires_position_embeddings=True,
        )
        lm = "model.language_model"
        self.component_mapping = {
            "vision_encoder": GeneralizedComponent(name="model.visual", config=self.cfg),
            "embed": EmbeddingBridge(name=f"{lm}.embed_tokens"),
            "rotary_emb": RotaryEmbeddingBridge(name=f"{lm}.rotary_emb"),
            "blocks": BlockBridge(
                name=f"{lm}.layers",
                submodules={
                    "ln1": RMSNormalizationBridge(name="input_layernorm", config=self.cfg),
                    "ln2": RMSNormalizationBridge(name="post_attention_layernorm", config=self.cfg),
                    "attn": attn,
                    "mlp": self._gated_mlp(),
                },
            ),
            "ln_final": RMSNormalizationBridge(name=f"{lm}.norm", config=self.cfg),
            "unembed": UnembeddingBridge(name="lm_head", config=self.cfg),
        }


class Qwen3VLArchitectureAdapter(QwenVLArchitectureAdapter):
    """Qwen3-VL's decoder: Qwen2's layout with per-head q/k RMSNorms before RoPE."""

    qk_norm = True


class Qwen2VLAdapter(VLMAdapter):
    """Qwen2-VL (``Qwen2VLForConditionalGeneration``)."""

    family = "qwen2_vl"
    architectures = ("Qwen2VLForConditionalGeneration",)
    tl_architecture_adapter: ClassVar[type | None] = QwenVLArchitectureAdapter
    image_input_keys = ("pixel_values", "image_grid_thw", "mm_token_type_ids")

    def __init__(self, model: nn.Module, processor: Any | None = None) -> None:
        super().__init__(model, processor)
        self._rope_index = getattr(model, "model").get_rope_index  # noqa: B009

    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        config: Any = model.config
        return TokenSpec(
            image_token_ids=frozenset({int(config.image_token_id)}),
            image_start_token_ids=frozenset({int(config.vision_start_token_id)}),
            image_end_token_ids=frozenset({int(config.vision_end_token_id)}),
            placeholder_token_id=int(config.image_token_id),
            delimited=True,
        )

    @property
    def image_placeholder(self) -> str:
        """``<|vision_start|><|image_pad|><|vision_end|>``: the processor expands only the pad."""
        return "<|vision_start|><|image_pad|><|vision_end|>"

    def count_images(self, inputs: Mapping[str, Any]) -> int:
        grid = inputs.get("image_grid_thw")
        return 0 if grid is None else int(grid.shape[0])

    def expected_tokens_per_image(self, inputs: Mapping[str, Any], image: int) -> int | None:
        grid = inputs.get("image_grid_thw")
        if grid is None or image >= grid.shape[0]:
            return None
        return int(grid[image].prod()) // int(self.config.vision_config.spatial_merge_size) ** 2

    def position_ids(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        ids = inputs["input_ids"]
        types = inputs.get("mm_token_type_ids")
        grid = inputs.get("image_grid_thw")
        if types is None or grid is None:  # text only: HF's own arange, on all three axes
            return torch.arange(ids.shape[-1], device=ids.device).view(1, 1, -1).expand(3, 1, -1)
        position_ids, _ = self._rope_index(
            ids, types, grid, None, attention_mask=inputs.get("attention_mask")
        )
        return position_ids

    @classmethod
    def load_processor(cls, name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
        import transformers
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        base = getattr(transformers, f"{cls.architectures[0].split('For')[0]}Processor")
        return images_only_processor_class(base)(
            Qwen2VLImageProcessorPil.from_pretrained(name_or_path, **kwargs),
            transformers.AutoTokenizer.from_pretrained(name_or_path, **kwargs),
        )


class Qwen2_5_VLAdapter(Qwen2VLAdapter):  # noqa: N801 - HF's spelling
    """Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``)."""

    family = "qwen2_5_vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL (``Qwen3VLForConditionalGeneration``): deepstack features added between the
    first decoder layers (``resid_pre(i + 1) = resid_post(i) + deepstack_i``, module docstring).

    Example:
        >>> from vlm_lens import HookedVLM
        >>> from vlm_lens.testing import build_tiny
        >>> tiny = build_tiny("qwen3_vl")
        >>> HookedVLM.from_hf(tiny.model, tiny.processor).family
        'qwen3_vl'
    """

    family = "qwen3_vl"
    architectures = ("Qwen3VLForConditionalGeneration",)
    tl_architecture_adapter = Qwen3VLArchitectureAdapter

    def deepstack_levels(self) -> int:
        """One level per ``deepstack_visual_indexes`` entry (HF's ``deepstack_features``)."""
        return len(self.config.vision_config.deepstack_visual_indexes)

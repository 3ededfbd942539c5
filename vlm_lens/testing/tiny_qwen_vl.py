"""Tiny offline Qwen2-VL, Qwen2.5-VL and Qwen3-VL models, with transformers' own processors.

The text model has the shapes of :mod:`vlm_lens.testing.tiny_models` (hidden 32, 2 layers, 4
heads, 2 KV heads, head 8, multi-axis rotary sections ``[2, 1, 1]``); the vision tower is a
2-layer Qwen tower with patch 4, temporal patch 2 and a 2 x 2 merger, so an ``H x W`` image gives
``(H/8) x (W/8)`` ``<|image_pad|>`` tokens between ``<|vision_start|>`` and ``<|vision_end|>``.
The processor is the family's own (``Qwen2VLProcessor``...) on the PIL
``Qwen2VLImageProcessorPil``, built without a video processor
(`vlm_lens.processors.images_only_processor_class`). Tiny Qwen3-VL feeds deepstack features
from its first tower layer into the first decoder layer.

Example:
    >>> tiny = tiny_qwen2_vl()
    >>> inputs = tiny.sample_inputs()
    >>> inputs["image_grid_thw"].tolist()
    [[1, 8, 8]]
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlm_lens.processors import images_only_processor_class
from vlm_lens.testing.tiny_models import (
    TinyVLM,
    _construct,
    _finish,
    _make_tokenizer,
    _randomise,
    _text_config,
)

__all__ = ["QWEN_IMAGE_SIZE", "QWEN_PATCH", "tiny_qwen2_5_vl", "tiny_qwen2_vl", "tiny_qwen3_vl"]

QWEN_IMAGE_SIZE = (32, 32)
"""``(height, width)`` of the sample image: an 8 x 8 patch grid, 4 x 4 merged tokens (the gate
sits at position 20: an eager prefix pass shorter than 16 positions is not bit-exact on CPU)."""
QWEN_PATCH = 4
"""Patch size of the tiny towers (times the 2 x 2 merge: 8 pixels a token)."""
_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_PROMPT = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in the image?"
    "<|im_end|>\n<|im_start|>assistant\n"
)
_FAMILIES: dict[str, tuple[Any, Any, Any]] = {
    "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor),
    "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor),
    "qwen3_vl": (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor),
}


def _vision(family: str, out: int) -> dict[str, Any]:
    common = {"depth": 2, "num_heads": 4, "patch_size": QWEN_PATCH, "spatial_merge_size": 2}
    if family == "qwen2_vl":
        return {**common, "embed_dim": 32, "hidden_size": out, "mlp_ratio": 2}
    extra: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "out_hidden_size": out}
    if family == "qwen2_5_vl":
        extra.update(window_size=16, fullatt_block_indexes=[1])
    else:
        extra.update(deepstack_visual_indexes=[0], num_position_embeddings=64)
    return {**common, **extra}


def _build(family: str, seed: int, dtype: torch.dtype, **text: Any) -> TinyVLM:
    config_cls, model_cls, processor_cls = _FAMILIES[family]
    tokenizer = _make_tokenizer(
        _SPECIALS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        image_token="<|image_pad|>",
        video_token="<|video_pad|>",
    )
    text_config = _text_config(tokenizer, **text)
    head_dim = text_config["hidden_size"] // text_config["num_attention_heads"]
    quarter = head_dim // 8
    section = [head_dim // 2 - 2 * quarter, quarter, quarter]
    text_config["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": section,
        **({"mrope_interleaved": True} if family == "qwen3_vl" else {}),
    }
    if family == "qwen3_vl":
        text_config["head_dim"] = head_dim
    ids = tokenizer.convert_tokens_to_ids
    config = config_cls(
        text_config=text_config,
        vision_config=_vision(family, text_config["hidden_size"]),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    model = _construct(model_cls, config, seed)
    inner = model.model
    _randomise(
        torch.Generator().manual_seed(seed),
        dense=[inner.language_model, model.lm_head, inner.visual.merger],
        norms_in=[inner.visual],
    )
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=QWEN_PATCH,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 8 * 8, "longest_edge": 32 * 32},
    )
    processor = images_only_processor_class(processor_cls)(image_processor, tokenizer)
    return TinyVLM(
        model=_finish(model, tokenizer, dtype),
        processor=processor,
        tokenizer=tokenizer,
        family=family,
        image_size=QWEN_IMAGE_SIZE,
        prompt=_PROMPT,
    )


def tiny_qwen2_vl(*, seed: int = 0, dtype: torch.dtype = torch.float32, **text: Any) -> TinyVLM:
    """Builds a tiny ``Qwen2VLForConditionalGeneration``.

    Args:
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end.
        **text: Text-config overrides (``hidden_size=``, ``num_hidden_layers=``...).

    Returns:
        The tiny model with its processor and tokenizer.
    """
    return _build("qwen2_vl", seed, dtype, **text)


def tiny_qwen2_5_vl(*, seed: int = 0, dtype: torch.dtype = torch.float32, **text: Any) -> TinyVLM:
    """Builds a tiny ``Qwen2_5_VLForConditionalGeneration`` (windowed tower, gated MLP); as
    :func:`tiny_qwen2_vl`."""
    return _build("qwen2_5_vl", seed, dtype, **text)


def tiny_qwen3_vl(*, seed: int = 0, dtype: torch.dtype = torch.float32, **text: Any) -> TinyVLM:
    """Builds a tiny ``Qwen3VLForConditionalGeneration`` (q/k norms, interleaved multi-axis
    rotary, deepstack features into decoder layer 0); as :func:`tiny_qwen2_vl`."""
    return _build("qwen3_vl", seed, dtype, **text)

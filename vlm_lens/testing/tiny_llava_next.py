"""Tiny offline LLaVA-Next (``LlavaNextForConditionalGeneration``: a CLIP tower, a Llama text
model) and LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``: a SigLIP tower, a Qwen2
text model), with transformers' own processors on their PIL image processors (OneVision's
without its video processor, which needs torchvision).

Both towers see 8 x 8 crops in 4 x 4 patches (CLIP's CLS dropped by the ``"default"``
strategy; SigLIP has none): 4 features per crop. The "anyres" grid pinpoints are 8 x 8,
8 x 16, 16 x 8 and 16 x 16, so an image gives the base crop and 1, 2 or 4 tiles; the span is the
base image's 4 tokens, then the unpadded tile grid row by row, each row ended by the learned
``image_newline`` vector (role ``image_row_end``; the placeholder id, not a token of its own).
OneVision writes only the base crop and one ``image_newline`` per image when a prompt has
several images.

Example:
    >>> tiny = tiny_llava_next()
    >>> ids = tiny.sample_inputs()["input_ids"][0].tolist()
    >>> tiny.tokenizer.convert_ids_to_tokens(ids).count("<image>") > 4
    True
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
)
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from vlm_lens.processors import images_only_processor_class
from vlm_lens.testing.tiny_models import (
    TinyVLM,
    _construct,
    _finish,
    _make_tokenizer,
    _randomise,
    _text_config,
)

__all__ = ["LLAVA_NEXT_IMAGE_SIZE", "LLAVA_NEXT_SIZES", "tiny_llava_next", "tiny_llava_onevision"]

LLAVA_NEXT_IMAGE_SIZE = (16, 24)
"""``(height, width)`` of the sample image."""
LLAVA_NEXT_SIZES = ((16, 24), (24, 16), (16, 16))
"""Sample image sizes of the role checks: different tile grids."""
_CROP = 8
_PATCH = 4
_PINPOINTS = [[8, 8], [8, 16], [16, 8], [16, 16]]


def _build(
    onevision: bool,
    text_backbone: str,
    seed: int,
    dtype: torch.dtype,
    crop: int = _CROP,
    pinpoints: list[list[int]] | None = None,
    **text: Any,
) -> TinyVLM:
    pinpoints = pinpoints or _PINPOINTS
    bos: dict[str, str] = {} if onevision else {"bos_token": "<s>"}
    tokenizer = _make_tokenizer(
        ["<s>", "</s>", "<unk>", "<pad>", "<image>", "<video>"],
        add_bos=None if onevision else "<s>",
        **bos,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        image_token="<image>",
        video_token="<video>",
    )
    vision: dict[str, Any] = {
        "model_type": "siglip_vision_model" if onevision else "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": crop,
        "patch_size": _PATCH,
    }
    strategy = "full" if onevision else "default"
    common: dict[str, Any] = {
        "vision_config": vision,
        "text_config": {"model_type": text_backbone, **_text_config(tokenizer, **text)},
        "image_token_index": tokenizer.image_token_id,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": strategy,
        "image_grid_pinpoints": pinpoints,
    }
    config_cls: Any = LlavaOnevisionConfig if onevision else LlavaNextConfig
    model_cls: Any = (
        LlavaOnevisionForConditionalGeneration if onevision else LlavaNextForConditionalGeneration
    )
    if onevision:
        common["video_token_index"] = tokenizer.convert_tokens_to_ids("<video>")
    model = _construct(model_cls, config_cls(**common), seed)
    inner = model.model
    _randomise(
        torch.Generator().manual_seed(seed),
        dense=[inner.language_model, model.lm_head, inner.multi_modal_projector],
        norms_in=[inner.vision_tower],
    )
    image_kwargs: dict[str, Any] = {
        "size": {"height": crop, "width": crop} if onevision else {"shortest_edge": crop},
        "crop_size": {"height": crop, "width": crop},
        "image_grid_pinpoints": pinpoints,
    }
    processor: Any
    if onevision:
        processor = images_only_processor_class(LlavaOnevisionProcessor)(
            image_processor=LlavaOnevisionImageProcessorPil(**image_kwargs),
            tokenizer=tokenizer,
            num_image_tokens=(crop // _PATCH) ** 2,
            vision_feature_select_strategy=strategy,
        )
        prompt = (
            "<|im_start|>user\n<image>\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n"
        )
    else:
        processor = LlavaNextProcessor(
            LlavaNextImageProcessorPil(**image_kwargs),
            tokenizer,
            patch_size=_PATCH,
            vision_feature_select_strategy=strategy,
            num_additional_image_tokens=1,  # CLIP's CLS; the "default" strategy drops it again
        )
        prompt = "[INST] <image>\nWhat is in the image? [/INST]"
    return TinyVLM(
        model=_finish(model, tokenizer, dtype),
        processor=processor,
        tokenizer=tokenizer,
        family="llava_onevision" if onevision else "llava_next",
        image_size=LLAVA_NEXT_IMAGE_SIZE,
        prompt=prompt,
    )


def tiny_llava_next(
    *, text_backbone: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32
) -> TinyVLM:
    """Builds a tiny ``LlavaNextForConditionalGeneration`` (CLIP tower, Llama text model).

    Token ids: bytes 0-255, then ``<s>`` 256 (BOS), ``</s>`` 257, ``<unk>`` 258, ``<pad>``
    259, ``<image>`` 260 (the placeholder), ``<video>`` 261.

    Args:
        text_backbone: ``text_config.model_type`` (``"llama"``, ``"mistral"``, ``"qwen2"``).
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end.

    Returns:
        The tiny model with its processor and tokenizer.
    """
    return _build(False, text_backbone, seed, dtype)


def tiny_llava_onevision(
    *,
    text_backbone: str = "qwen2",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    crop: int = _CROP,
    pinpoints: list[list[int]] | None = None,
    **text: Any,
) -> TinyVLM:
    """Builds a tiny ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower, Qwen2 text
    model, no BOS as Qwen2; the ids of `tiny_llava_next`).

    Args:
        text_backbone: ``text_config.model_type`` (``"qwen2"`` as the released models).
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end.
        crop: Side of the tower's crops in pixels (patch 4: ``(crop/4)**2`` features each).
        pinpoints: The anyres grid resolutions (default 8 x 8 to 16 x 16).
        **text: Text-config overrides (``hidden_size=``, ``num_hidden_layers=``...).

    Returns:
        The tiny model with its processor and tokenizer.
    """
    return _build(True, text_backbone, seed, dtype, crop, pinpoints, **text)

"""Tiny offline InternVL (``InternVLForConditionalGeneration``, the HF-native port of InternVL3).

InternViT-style tower (hidden 32, 2 layers, 16 x 16 tiles of 4 x 4 patches, CLS dropped), pixel
shuffle by 0.5 and the 2-layer projector: 4 ``<IMG_CONTEXT>`` per tile. The processor is
transformers' ``InternVLProcessor`` on the PIL ``GotOcr2ImageProcessorPil`` with dynamic
high-resolution tiles (``crop_to_patches``, at most 4 tiles, plus a 16 x 16 thumbnail when an
image gives more than one tile): a 16 x 16 image is 1 tile (4 tokens), 16 x 32 is 2 tiles and a
thumbnail (12 tokens), 32 x 32 is 4 tiles and a thumbnail (20). Each image is written ``<img>``
+ ``<IMG_CONTEXT>`` x 4 x tiles +
``</img>``; its tiles are rows of ``pixel_values``. No video processor (it needs torchvision).

The text model is Qwen2 (q/k/v biases), as in InternVL3-1B/2B/8B.

Example:
    >>> tiny = tiny_internvl()
    >>> inputs = tiny.sample_inputs()  # 32 x 32: 2 x 2 tiles and a thumbnail
    >>> tokens = tiny.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    >>> tokens[1:3], tokens.count("<IMG_CONTEXT>"), tokens[22], len(inputs["pixel_values"])
    (['<img>', '<IMG_CONTEXT>'], 20, '</img>', 5)
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from vlm_lens.processors import internvl_processor_class
from vlm_lens.testing.tiny_models import (
    TinyVLM,
    _construct,
    _finish,
    _make_tokenizer,
    _randomise,
    _text_config,
)

__all__ = ["INTERNVL_IMAGE_SIZE", "INTERNVL_TILE", "tiny_internvl"]

INTERNVL_IMAGE_SIZE = (32, 32)
"""``(height, width)`` of the sample image: 2 x 2 tiles and a thumbnail, 20 image tokens. (With
16 x 32, 12 tokens, a prefix pass's eager attention rounds differently from the full pass's on
CPU, so prefix reuse would not be bit-exact.)"""
INTERNVL_TILE = 16
"""Side of one tile (the tower's image size)."""
_PATCH = 4


def tiny_internvl(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyVLM:
    """Builds a tiny ``InternVLForConditionalGeneration`` with a Qwen2 text model.

    Token ids: ``<|im_start|>`` 256 (BOS, prepended), ``<|im_end|>`` 257, ``<unk>`` 258,
    ``<pad>`` 259, ``<img>`` 260, ``</img>`` 261, ``<IMG_CONTEXT>`` 262 (placeholder),
    ``<video>`` 263.

    Args:
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end.

    Returns:
        The tiny model with its processor and tokenizer.
    """
    tokenizer = _make_tokenizer(
        ["<|im_start|>", "<|im_end|>", "<unk>", "<pad>", "<img>", "</img>", "<IMG_CONTEXT>"],
        ["<video>"],
        add_bos="<|im_start|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        image_token="<IMG_CONTEXT>",
        start_image_token="<img>",
        end_image_token="</img>",
        context_image_token="<IMG_CONTEXT>",
        video_token="<video>",
    )
    tokens_per_tile = (INTERNVL_TILE // _PATCH) ** 2 // 4  # pixel shuffle by 0.5
    image_token: Any = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    config = InternVLConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": [INTERNVL_TILE, INTERNVL_TILE],
            "patch_size": [_PATCH, _PATCH],
        },
        text_config={"model_type": "qwen2", **_text_config(tokenizer)},
        image_token_id=image_token,
        image_seq_length=tokens_per_tile,
        tie_word_embeddings=False,
    )
    model = _construct(InternVLForConditionalGeneration, config, seed)
    inner = model.model
    _randomise(
        torch.Generator().manual_seed(seed),
        dense=[inner.language_model, model.lm_head, inner.multi_modal_projector],
        norms_in=[inner.vision_tower],
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": INTERNVL_TILE, "width": INTERNVL_TILE},
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
    )
    processor = internvl_processor_class()(
        image_processor, tokenizer, image_seq_length=tokens_per_tile
    )
    return TinyVLM(
        model=_finish(model, tokenizer, dtype),
        processor=processor,
        tokenizer=tokenizer,
        family="internvl",
        image_size=INTERNVL_IMAGE_SIZE,
        prompt="<IMG_CONTEXT>\nWhat is in the image?",
    )

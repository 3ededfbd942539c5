"""Tiny offline InternVL (``InternVLForConditionalGeneration``) with transformers' own
``InternVLProcessor`` (images only: its video processor needs torchvision).

Shapes of :mod:`vlm_lens.testing.tiny_models` for the text model (hidden 32, 2 layers, 4 heads,
2 KV heads; Qwen2 with q/k/v biases by default, tied embeddings as InternVL's config sets); a
2-layer InternViT tower on 16 x 16 tiles, patch 4 (16 patches + CLS, CLS dropped), pixel shuffle
0.5 -> 4 tokens per tile. The PIL ``GotOcr2ImageProcessorPil`` crops an image into up to 4
tiles of 16 x 16 and adds a thumbnail when it made more than one (the 16 x 32 sample image:
2 tiles + thumbnail = 12 ``<IMG_CONTEXT>``).

Example:
    >>> tiny = tiny_internvl()
    >>> ids = tiny.sample_inputs()["input_ids"][0].tolist()
    >>> tiny.tokenizer.convert_ids_to_tokens(ids).count("<IMG_CONTEXT>")
    12
"""

from __future__ import annotations

import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from vlm_lens.processors import images_only_processor_class
from vlm_lens.testing.tiny_models import (
    TinyVLM,
    _construct,
    _finish,
    _make_tokenizer,
    _randomise,
    _text_config,
)

__all__ = ["INTERNVL_IMAGE_SIZE", "tiny_internvl"]

INTERNVL_IMAGE_SIZE = (16, 32)
"""``(height, width)`` of the sample image: two 16 x 16 tiles and the thumbnail."""
_TILE = 16
_PATCH = 4
_TILE_TOKENS = ((_TILE // _PATCH) // 2) ** 2  # pixel shuffle 0.5 halves each side


def tiny_internvl(
    *, text_backbone: str = "qwen2", seed: int = 0, dtype: torch.dtype = torch.float32
) -> TinyVLM:
    """Builds a tiny ``InternVLForConditionalGeneration``.

    Token ids: bytes 0-255, then ``<|endoftext|>`` 256 (padding), ``<|im_start|>`` 257,
    ``<|im_end|>`` 258 (end of sequence), ``<img>`` 259, ``</img>`` 260 (the gate),
    ``<IMG_CONTEXT>`` 261 (the placeholder), ``<video>`` 262. No BOS, as Qwen2.

    Args:
        text_backbone: ``text_config.model_type``: ``"qwen2"`` (InternVL 3) or ``"llama"``.
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end.

    Returns:
        The tiny model with its processor and tokenizer.
    """
    tokenizer = _make_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
        + ["<video>"],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        start_image_token="<img>",
        end_image_token="</img>",
        context_image_token="<IMG_CONTEXT>",
        image_token="<IMG_CONTEXT>",  # the name the other families' tokenizers use
        video_token="<video>",
    )
    config = InternVLConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": [_TILE, _TILE],
            "patch_size": [_PATCH, _PATCH],
        },
        text_config={"model_type": text_backbone, **_text_config(tokenizer)},
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=_TILE_TOKENS,
    )
    model = _construct(InternVLForConditionalGeneration, config, seed)
    inner = model.model
    _randomise(
        torch.Generator().manual_seed(seed),
        dense=[inner.language_model, model.lm_head, inner.multi_modal_projector],
        norms_in=[inner.vision_tower],
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": _TILE, "width": _TILE}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    processor = images_only_processor_class(InternVLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=_TILE_TOKENS
    )
    return TinyVLM(
        model=_finish(model, tokenizer, dtype),
        processor=processor,
        tokenizer=tokenizer,
        family="internvl",
        image_size=INTERNVL_IMAGE_SIZE,
        prompt="<|im_start|>user\n<IMG_CONTEXT>\nWhat is in the image?<|im_end|>\n"
        "<|im_start|>assistant\n",
    )

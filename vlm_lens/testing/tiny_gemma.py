"""Tiny offline Gemma 3 (``Gemma3ForConditionalGeneration``) with transformers' own processor.

A 2-layer SigLIP tower (patch 4, 16 x 16 images) and a byte-level tokenizer with Gemma's
special tokens. The text model has a sliding window of 8 on its first layer
(``layer_types = [sliding, full]``), so the window matters on the tiny prompts; the projector
pools the 4 x 4 patches to 4 soft tokens.

Example:
    >>> tiny = tiny_gemma3()
    >>> ids = tiny.sample_inputs()["input_ids"][0].tolist()
    >>> tiny.tokenizer.convert_ids_to_tokens(ids[15:21])
    ['<start_of_image>', '<image_soft_token>', '<image_soft_token>', '<image_soft_token>', '<image_soft_token>', '<end_of_image>']
"""  # noqa: E501

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from vlm_lens.testing.tiny_models import (
    TinyVLM,
    _construct,
    _finish,
    _make_tokenizer,
    _randomise,
    _text_config,
)

__all__ = ["GEMMA_IMAGE_SIZE", "tiny_gemma3"]

GEMMA_IMAGE_SIZE = (16, 16)
"""``(height, width)`` the tiny SigLIP towers take (4 x 4 patches of 4)."""
GEMMA3_SLIDING_WINDOW = 8
"""The tiny Gemma 3's sliding window (its first layer), shorter than the sample prompt."""
_PATCH = 4
_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")


def _vision() -> dict[str, Any]:
    return {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": GEMMA_IMAGE_SIZE[0],
        "patch_size": _PATCH,
    }


def _gemma_text(tokenizer: Any, model_type: str, **extra: Any) -> dict[str, Any]:
    return {
        "model_type": model_type,
        **_text_config(tokenizer),
        "head_dim": 8,
        "query_pre_attn_scalar": 8,
        **extra,
    }


def _image_processor(cls: Any, **kwargs: Any) -> Any:
    height, width = GEMMA_IMAGE_SIZE
    return cls(
        size={"height": height, "width": width},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        **kwargs,
    )


def _token_id(tokenizer: Any, token: str) -> int:
    return int(tokenizer.convert_tokens_to_ids(token))


def tiny_gemma3(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyVLM:
    """Builds a tiny ``Gemma3ForConditionalGeneration`` with transformers' ``Gemma3Processor``.

    Each ``<start_of_image>`` of a prompt becomes ``\\n\\n<start_of_image>``, 4
    ``<image_soft_token>`` and ``<end_of_image>\\n\\n``; the soft tokens attend to each other
    both ways. Layer 0 is a sliding-window layer (window 8), layer 1 full attention. (The
    sample prompt puts the gate at position 20: with a prefix pass of fewer than 16 positions,
    CPU eager attention rounds differently from the full pass, so prefix reuse would not be
    bit-exact.)

    Args:
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end.

    Returns:
        The tiny model with its processor and tokenizer.
    """
    tokenizer = _make_tokenizer(
        [*_SPECIALS, "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
        add_bos="<bos>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        boi_token="<start_of_image>",
        eoi_token="<end_of_image>",
        image_token="<image_soft_token>",
    )
    text = _gemma_text(
        tokenizer,
        "gemma3_text",
        sliding_window=GEMMA3_SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
    )
    config: Any = Gemma3Config(
        text_config=text,
        vision_config=_vision(),
        mm_tokens_per_image=4,
        boi_token_index=_token_id(tokenizer, "<start_of_image>"),
        eoi_token_index=_token_id(tokenizer, "<end_of_image>"),
        image_token_index=_token_id(tokenizer, "<image_soft_token>"),
    )
    model = _construct(Gemma3ForConditionalGeneration, config, seed)
    inner = model.model
    _randomise(
        torch.Generator().manual_seed(seed),
        dense=[inner.language_model, inner.multi_modal_projector],
        norms_in=[inner.vision_tower],
    )
    processor = Gemma3Processor(
        _image_processor(Gemma3ImageProcessorPil), tokenizer, image_seq_length=4
    )
    return TinyVLM(
        model=_finish(model, tokenizer, dtype),
        processor=processor,
        tokenizer=tokenizer,
        family="gemma3",
        image_size=GEMMA_IMAGE_SIZE,
        prompt="<start_of_turn>user\nLook: <start_of_image>What is in it?<end_of_turn>\n",
        per_prompt_images=True,
    )

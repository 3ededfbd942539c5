"""Tiny offline PaliGemma models (Gemma and Gemma 2 decoders), with transformers' own processor.

The text model has the shapes of :mod:`vlm_lens.testing.tiny_models` (hidden 32, 2 layers, 4
heads, 2 KV heads, head 8); the vision tower is a 2-layer SigLIP with patch 4 on 16 x 16 images,
so an image is 16 ``<image>`` tokens. ``PaliGemmaProcessor`` (on the PIL
``SiglipImageProcessorPil``) writes ``<image>`` x 16 where the prompt has ``<image>``, then
``<bos>`` after the last image, the prompt, and ``"\\n"``; every prompt position has
``token_type_ids == 0`` (the bidirectional prefix). The processor adds PaliGemma's 1,152
``<locNNNN>``/``<segNNN>`` tokens to the tokenizer, so the vocabulary is about 1,400.
``text_backbone="gemma2"`` builds PaliGemma 2: Gemma 2's four norms per layer, attention and
final-logit soft-capping, ``query_pre_attn_scalar`` and alternating sliding-window layers.

Example:
    >>> tiny = tiny_paligemma()
    >>> inputs = tiny.sample_inputs()
    >>> int((inputs["input_ids"] == tiny.model.config.image_token_id).sum())
    16
    >>> tiny.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0, 16:17].tolist())
    ['<bos>']
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from vlm_lens.testing.tiny_models import (
    TinyVLM,
    _construct,
    _finish,
    _make_tokenizer,
    _randomise,
    _text_config,
)

__all__ = ["PALIGEMMA_BACKBONES", "PALIGEMMA_IMAGE_SIZE", "tiny_paligemma"]

PALIGEMMA_IMAGE_SIZE = (16, 16)
"""``(height, width)`` of the tiny tower's images (a 4 x 4 patch grid: 16 image tokens)."""
PALIGEMMA_BACKBONES = ("gemma", "gemma2")
"""Values accepted by ``tiny_paligemma(text_backbone=...)``: PaliGemma 1 and 2."""
_PATCH = 4
_PROMPT = "<image>answer en What is in the image?"


def tiny_paligemma(
    *, text_backbone: str = "gemma", seed: int = 0, dtype: torch.dtype = torch.float32
) -> TinyVLM:
    """Builds a tiny ``PaliGemmaForConditionalGeneration``.

    Token ids: ``<pad>`` 256, ``<eos>`` 257, ``<bos>`` 258, ``<unk>`` 259, ``<image>`` 260 (the
    placeholder, ``config.image_token_id``), then the processor's location/segmentation tokens.

    Args:
        text_backbone: ``"gemma"`` (PaliGemma 1) or ``"gemma2"`` (PaliGemma 2).
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end.

    Returns:
        The tiny model with its processor and tokenizer.

    Raises:
        ValueError: If ``text_backbone`` is not one of :data:`PALIGEMMA_BACKBONES`.
    """
    if text_backbone not in PALIGEMMA_BACKBONES:
        raise ValueError(
            f"unknown text_backbone {text_backbone!r}; expected one of {PALIGEMMA_BACKBONES}"
        )
    tokenizer = _make_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"],
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        image_token="<image>",
    )
    height, width = PALIGEMMA_IMAGE_SIZE
    n_image_tokens = (height // _PATCH) * (width // _PATCH)
    image_processor = SiglipImageProcessorPil(size={"height": height, "width": width})
    # read by PaliGemmaProcessor and saved with the image processor (no class attribute)
    image_processor.image_seq_length = n_image_tokens  # type: ignore[attr-defined]
    processor = PaliGemmaProcessor(image_processor, tokenizer)  # adds <locNNNN>, <segNNN>
    text = _text_config(tokenizer)
    extra: dict[str, Any] = {"head_dim": text["hidden_size"] // text["num_attention_heads"]}
    if text_backbone == "gemma2":
        # soft-capping small enough to bite on random weights; one sliding layer in two
        extra.update(
            final_logit_softcapping=5.0,
            attn_logit_softcapping=3.0,
            query_pre_attn_scalar=16,
            sliding_window=8,
        )
    config = PaliGemmaConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": height,
            "patch_size": _PATCH,
            "vision_use_head": False,
        },
        text_config={"model_type": text_backbone, **text, **extra},
        image_token_index=tokenizer.image_token_id,
        projection_dim=text["hidden_size"],
        hidden_size=text["hidden_size"],
        vocab_size=text["vocab_size"],
    )
    model = _construct(PaliGemmaForConditionalGeneration, config, seed)
    inner = model.model
    _randomise(
        torch.Generator().manual_seed(seed),
        dense=[inner.language_model, model.lm_head, inner.multi_modal_projector],
        norms_in=[inner.vision_tower],
    )
    return TinyVLM(
        model=_finish(model, tokenizer, dtype),
        processor=processor,
        tokenizer=tokenizer,
        family="paligemma",
        image_size=PALIGEMMA_IMAGE_SIZE,
        prompt=_PROMPT,
    )

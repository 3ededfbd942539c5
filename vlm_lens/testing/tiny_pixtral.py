"""Tiny offline Pixtral (``LlavaForConditionalGeneration`` with a Pixtral tower) and Mistral 3
(``Mistral3ForConditionalGeneration``) models, with transformers' own ``PixtralProcessor``.

Both share the tokenizer and the shapes of :mod:`vlm_lens.testing.tiny_models` (hidden 32, 2
layers, 4 heads, 2 KV heads, a Mistral text model); the vision tower is a 2-layer Pixtral with
patch 4 (2D rotary, images up to 32 x 32, any aspect ratio). The processor is transformers'
``PixtralProcessor`` on the PIL ``PixtralImageProcessorPil`` (longest edge 32).

Token ids follow Mistral's tokenizers: the control tokens come first (``<unk>`` 0, ``<s>`` 1,
``</s>`` 2, ``[INST]`` 3, ``[/INST]`` 4, ..., ``[IMG]`` 10, ``<pad>`` 11, ``[IMG_BREAK]`` 12,
``[IMG_END]`` 13), then the 256 byte-level symbols from id 14.

Example:
    >>> tiny = tiny_pixtral()
    >>> inputs = tiny.sample_inputs()
    >>> tiny.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0, 2:7].tolist())
    ['[IMG]', '[IMG]', '[IMG]', '[IMG]', '[IMG]']
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerFast,
)
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

from vlm_lens.processors import pixtral_processor_class
from vlm_lens.testing.tiny_models import (
    TinyVLM,
    _construct,
    _finish,
    _randomise,
    _text_config,
)

__all__ = [
    "MISTRAL3_IMAGE_SIZE",
    "PIXTRAL_IMAGE_SIZE",
    "PIXTRAL_PATCH",
    "tiny_mistral3",
    "tiny_pixtral",
]

PIXTRAL_IMAGE_SIZE = (16, 24)
"""``(height, width)`` of the Pixtral sample image: 4 rows of 6 patches."""
MISTRAL3_IMAGE_SIZE = (24, 32)
"""``(height, width)`` of the Mistral 3 sample image: 3 rows of 4 merged patches. (With 16 x 24,
the prompt's image ends at position 9, and a 9-position prefix pass's eager attention rounds
differently from the full pass's on CPU, so prefix reuse would not be bit-exact.)"""
PIXTRAL_PATCH = 4
"""Patch size of the tiny Pixtral tower."""
_LONGEST_EDGE = 32
_CONTROL = (
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
)


def _mistral_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with Mistral's control tokens at Mistral's ids."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(_CONTROL)}
    vocab.update({ch: len(_CONTROL) + i for i, ch in enumerate(alphabet)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _CONTROL])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        image_token="[IMG]",
    )


def _build(
    merge: int, seed: int, dtype: torch.dtype, family: str, image_size: tuple[int, int]
) -> TinyVLM:
    tokenizer = _mistral_tokenizer()
    vision = {
        "model_type": "pixtral",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "head_dim": 8,
        "image_size": _LONGEST_EDGE,
        "patch_size": PIXTRAL_PATCH,
    }
    text = {"model_type": "mistral", **_text_config(tokenizer)}
    image_token: Any = tokenizer.convert_tokens_to_ids("[IMG]")
    config: Any
    if merge == 1:
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=image_token,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            image_seq_length=1,
        )
        model_cls: Any = LlavaForConditionalGeneration
    else:
        config = Mistral3Config(
            vision_config=vision,
            text_config=text,
            image_token_index=image_token,
            vision_feature_layer=-1,
            spatial_merge_size=merge,
        )
        model_cls = Mistral3ForConditionalGeneration
    model = _construct(model_cls, config, seed)
    inner = model.model
    _randomise(
        torch.Generator().manual_seed(seed),
        dense=[inner.language_model, model.lm_head, inner.multi_modal_projector],
        norms_in=[inner.vision_tower],
    )
    step = PIXTRAL_PATCH * merge
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": _LONGEST_EDGE}, patch_size={"height": step, "width": step}
    )
    processor = pixtral_processor_class()(
        image_processor, tokenizer, patch_size=PIXTRAL_PATCH, spatial_merge_size=merge
    )
    return TinyVLM(
        model=_finish(model, tokenizer, dtype),
        processor=processor,
        tokenizer=tokenizer,
        family=family,
        image_size=image_size,
        prompt="[INST][IMG]What is in the image?[/INST]",
    )


def tiny_pixtral(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyVLM:
    """Builds a tiny Pixtral: ``LlavaForConditionalGeneration`` with a Pixtral tower.

    Features from the last tower layer, all patches (``"full"``), through LLaVA's 2-layer GELU
    projector: one ``[IMG]`` per 4 x 4 patch, ``[IMG_BREAK]`` after each row but the last,
    ``[IMG_END]`` after it (a 16 x 24 image: 4 rows of 6).

    Args:
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end.

    Returns:
        The tiny model with its processor and tokenizer.
    """
    return _build(1, seed, dtype, "pixtral", PIXTRAL_IMAGE_SIZE)


def tiny_mistral3(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyVLM:
    """Builds a tiny ``Mistral3ForConditionalGeneration``: the Pixtral tower, then Mistral 3's
    RMSNorm, a 2 x 2 patch merger and the projector, so one ``[IMG]`` per 8 x 8 pixels (the
    24 x 32 sample image: 3 rows of 4).

    Args:
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end.

    Returns:
        The tiny model with its processor and tokenizer.
    """
    return _build(2, seed, dtype, "mistral3", MISTRAL3_IMAGE_SIZE)

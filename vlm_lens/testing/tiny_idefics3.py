"""Tiny offline Idefics3 (``Idefics3ForConditionalGeneration``) and SmolVLM
(``SmolVLMForConditionalGeneration``) models, with transformers' own processors.

SigLIP-style tower (hidden 32, 2 layers, 16 x 16 tiles of 4 x 4 patches), the pixel-shuffle
connector (scale factor 2): 4 ``<image>`` per tile, and a Llama text model (SmolLM2). The image
processor is the PIL one (``Idefics3ImageProcessorPil``/``SmolVLMImageProcessorPil``): the image is
resized to a longest edge of 32, split into tiles of 16 x 16 (``do_image_splitting``), and the
whole image, resized to one tile, is added as the global image. A 32 x 32 image gives 2 x 2 tiles;
16 x 32 gives 1 x 2; 16 x 16 none but the global image. The processor writes, for a 1 x 2 grid::

    <fake_token_around_image><row_1_col_1><image>x4<fake_token_around_image><row_1_col_2><image>x4
    \\n\\n<fake_token_around_image><global-img><image>x4<fake_token_around_image>

with a newline after each tile row and a second one before the global image.

Example:
    >>> tiny = tiny_idefics3()
    >>> ids = tiny.sample_inputs()["input_ids"][0].tolist()
    >>> tiny.tokenizer.convert_ids_to_tokens(ids[1:4])
    ['<fake_token_around_image>', '<row_1_col_1>', '<image>']
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

from vlm_lens.testing.tiny_models import (
    TinyVLM,
    _construct,
    _finish,
    _make_tokenizer,
    _randomise,
    _text_config,
)

__all__ = [
    "IDEFICS3_IMAGE_SIZE",
    "IDEFICS3_SIZES",
    "IDEFICS3_TILE",
    "tiny_idefics3",
    "tiny_smolvlm",
]

IDEFICS3_IMAGE_SIZE = (32, 32)
"""``(height, width)`` of the sample image: 2 x 2 tiles and the global image, 20 ``<image>``."""
IDEFICS3_SIZES = ((32, 32), (16, 32), (32, 16))
"""Sample image sizes of the role checks: 2 x 2, 1 x 2 and 2 x 1 tiles (and the global one)."""
IDEFICS3_TILE = 16
"""Side of one tile (the tower's image size)."""
_PATCH = 4
_SPECIALS = (
    "<|im_start|>",
    "<end_of_utterance>",
    "<unk>",
    "<pad>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
)
_ROW_COL = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))


def _build(smol: bool, seed: int, dtype: torch.dtype) -> TinyVLM:
    tokenizer = _make_tokenizer(
        _SPECIALS,
        _ROW_COL,
        add_bos="<|im_start|>",
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        unk_token="<unk>",
        pad_token="<pad>",
        image_token="<image>",
    )
    scale = 2
    per_tile = (IDEFICS3_TILE // _PATCH) ** 2 // scale**2
    config_cls: Any = SmolVLMConfig if smol else Idefics3Config
    config = config_cls(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": IDEFICS3_TILE,
            "patch_size": _PATCH,
        },
        text_config={"model_type": "llama", **_text_config(tokenizer)},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_cls: Any = SmolVLMForConditionalGeneration if smol else Idefics3ForConditionalGeneration
    model = _construct(model_cls, config, seed)
    inner = model.model
    _randomise(
        torch.Generator().manual_seed(seed),
        dense=[inner.text_model, model.lm_head, inner.connector],
        norms_in=[inner.vision_model],
    )
    image_processor_cls: Any = SmolVLMImageProcessorPil if smol else Idefics3ImageProcessorPil
    image_processor = image_processor_cls(
        size={"longest_edge": 2 * IDEFICS3_TILE},
        max_image_size={"longest_edge": IDEFICS3_TILE},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(image_processor, tokenizer, image_seq_len=per_tile)
    return TinyVLM(
        model=_finish(model, tokenizer, dtype),
        processor=processor,
        tokenizer=tokenizer,
        family="smolvlm" if smol else "idefics3",
        image_size=IDEFICS3_IMAGE_SIZE,
        prompt="<image>What is in the image?",
    )


def tiny_idefics3(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyVLM:
    """Builds a tiny ``Idefics3ForConditionalGeneration`` (Llama text model).

    Token ids: ``<|im_start|>`` 256 (BOS, prepended), ``<end_of_utterance>`` 257, ``<unk>``
    258, ``<pad>`` 259, ``<fake_token_around_image>`` 260, ``<image>`` 261 (placeholder),
    ``<global-img>`` 262, ``<row_1_col_1>`` ... ``<row_6_col_6>`` 263-298.

    Args:
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end.

    Returns:
        The tiny model with its processor and tokenizer.
    """
    return _build(False, seed, dtype)


def tiny_smolvlm(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyVLM:
    """Builds a tiny ``SmolVLMForConditionalGeneration``: the Idefics3 model and tokenizer of
    :func:`tiny_idefics3` under SmolVLM's classes, with SmolVLM's PIL image processor in an
    ``Idefics3Processor`` (``SmolVLMProcessor`` writes the same image prompt but needs
    ``num2words`` and a torchvision video processor).

    Args:
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end.

    Returns:
        The tiny model with its processor and tokenizer.
    """
    return _build(True, seed, dtype)

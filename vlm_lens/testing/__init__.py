"""Testing utilities for ``vlm_lens``: tiny, offline, randomly initialised VLMs, and the registry
of tiny variants the contract suite (``tests/contract/``) is parametrised over."""

from vlm_lens.testing.registry import (
    GRID_TEXT,
    TINY_FAMILIES,
    ImageFrame,
    TinyVariant,
    build_tiny,
    register_tiny,
    tiny_families,
    tiny_variant,
    tiny_variants,
)
from vlm_lens.testing.tiny_internvl import tiny_internvl
from vlm_lens.testing.tiny_models import (
    LLAVA_TEXT_BACKBONES,
    TinyVLM,
    sample_image,
    save_tiny,
    tiny_chameleon,
    tiny_emu3,
    tiny_janus,
    tiny_llava,
)
from vlm_lens.testing.tiny_pixtral import tiny_mistral3, tiny_pixtral

__all__ = [
    "GRID_TEXT",
    "LLAVA_TEXT_BACKBONES",
    "TINY_FAMILIES",
    "ImageFrame",
    "TinyVLM",
    "TinyVariant",
    "build_tiny",
    "register_tiny",
    "sample_image",
    "save_tiny",
    "tiny_chameleon",
    "tiny_emu3",
    "tiny_families",
    "tiny_internvl",
    "tiny_janus",
    "tiny_llava",
    "tiny_mistral3",
    "tiny_pixtral",
    "tiny_variant",
    "tiny_variants",
]

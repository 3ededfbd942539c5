"""Testing utilities for ``vlm_lens``: tiny, offline, randomly initialised VLMs."""

from vlm_lens.testing.tiny_models import (
    LLAVA_TEXT_BACKBONES,
    TINY_FAMILIES,
    TinyVLM,
    build_tiny,
    sample_image,
    save_tiny,
    tiny_chameleon,
    tiny_emu3,
    tiny_janus,
    tiny_llava,
)

__all__ = [
    "LLAVA_TEXT_BACKBONES",
    "TINY_FAMILIES",
    "TinyVLM",
    "build_tiny",
    "sample_image",
    "save_tiny",
    "tiny_chameleon",
    "tiny_emu3",
    "tiny_janus",
    "tiny_llava",
]

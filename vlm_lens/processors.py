"""Hugging Face processor classes that import torchvision at module level, loaded without it.

torchvision cannot be a dependency (it pins its own torch); a processor whose module imports one
helper from a torchvision-backed image processor is imported here with the PIL image
processor's helper standing in for that one import. Used by the adapters' `load_processor` and
the tiny builders of `vlm_lens.testing`.

Example:
    >>> pixtral_processor_class().__name__
    'PixtralProcessor'
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["images_only_processor_class", "pixtral_processor_class"]


def pixtral_processor_class() -> Any:
    """transformers' ``PixtralProcessor``, importable without torchvision.

    Its module imports one helper from the torchvision image processor; without torchvision
    the same helper of the PIL image processor stands in for that import only.
    """
    name = "transformers.models.pixtral.processing_pixtral"
    try:
        return importlib.import_module(name).PixtralProcessor
    except ModuleNotFoundError as error:
        if error.name != "torchvision":
            raise
    from transformers.models.pixtral import image_processing_pil_pixtral as pil

    stand_in = types.ModuleType("transformers.models.pixtral.image_processing_pixtral")
    stand_in.get_resize_output_image_size = pil.get_resize_output_image_size  # type: ignore[attr-defined]
    sys.modules[stand_in.__name__] = stand_in
    try:
        return importlib.import_module(name).PixtralProcessor
    finally:
        del sys.modules[stand_in.__name__]


_IMAGES_ONLY: dict[type, type] = {}


def images_only_processor_class(base: type) -> Any:
    """A subclass of processor class `base` (``Qwen2VLProcessor``...) built from an image
    processor and a tokenizer alone, with no video processor (whose module needs torchvision).

    Example:
        >>> from transformers import Qwen2VLProcessor
        >>> images_only_processor_class(Qwen2VLProcessor).get_attributes()
        ['image_processor', 'tokenizer']
    """
    if base not in _IMAGES_ONLY:

        def __init__(  # noqa: N807 - the processor's own constructor
            self: Any,
            image_processor: Any = None,
            tokenizer: Any = None,
            chat_template: Any = None,
            **kwargs: Any,
        ) -> None:
            base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template)

        _IMAGES_ONLY[base] = type(base.__name__, (base,), {"__init__": __init__})
    return _IMAGES_ONLY[base]

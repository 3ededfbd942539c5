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
import typing
from typing import Any

__all__ = ["internvl_processor_class", "pixtral_processor_class"]


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


def internvl_processor_class() -> Any:
    """transformers' ``InternVLProcessor`` without its video processor (which needs torchvision).

    The subclass takes ``(image_processor, tokenizer, image_seq_length, chat_template)``; it
    writes images exactly as ``InternVLProcessor`` does and loads with ``from_pretrained``
    from a folder that ``InternVLProcessor`` saved.

    Example:
        >>> internvl_processor_class().get_attributes()
        ['image_processor', 'tokenizer']
    """
    from transformers import InternVLProcessor

    class InternVLImageProcessor(InternVLProcessor):
        """``InternVLProcessor`` for images only (no video processor)."""

        @typing.no_type_check  # a runtime type checker's wrapper would hide this signature,
        def __init__(  # which ProcessorMixin reads to pick the saved kwargs it passes on
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            image_seq_length: int = 256,
            chat_template: Any = None,
            **kwargs: Any,
        ) -> None:
            # the base passes ``video_processor=None`` positionally after the two attributes
            # this signature names; ProcessorMixin zips it away with the attributes
            super().__init__(
                image_processor, tokenizer, None, image_seq_length, chat_template, **kwargs
            )

    InternVLImageProcessor.__module__ = __name__
    return InternVLImageProcessor

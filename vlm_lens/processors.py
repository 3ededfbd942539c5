"""Hugging Face processors that need torchvision to import, made importable without it.

``transformers.PixtralProcessor`` is a placeholder that raises when torchvision is missing,
although the processor itself runs on PIL; `pixtral_processor_class` returns the real class.
Used by the Pixtral adapter's ``load_processor`` and by the tiny Pixtral builders.

Example:
    >>> pixtral_processor_class().__name__
    'PixtralProcessor'
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


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
    setattr(stand_in, "get_resize_output_image_size", pil.get_resize_output_image_size)  # noqa: B010
    sys.modules[stand_in.__name__] = stand_in
    try:
        return importlib.import_module(name).PixtralProcessor
    finally:
        del sys.modules[stand_in.__name__]

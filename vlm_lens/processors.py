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

__all__ = ["pixtral_processor_class"]


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

"""Hugging Face processor classes that need torchvision, used without it.

torchvision cannot be a dependency (it pins its own torch). Two cases: a processor whose module
imports one helper from a torchvision-backed image processor is imported with the PIL image
processor's helper standing in for that one import (`pixtral_processor_class`); a processor
that also takes a video processor (torchvision only) gets a subclass without it
(`images_only_processor_class`). Used by the adapters' `load_processor` and the tiny builders
of `vlm_lens.testing`.

Example:
    >>> pixtral_processor_class().__name__
    'PixtralProcessor'
    >>> from transformers import InternVLProcessor
    >>> images_only_processor_class(InternVLProcessor).get_attributes()
    ['image_processor', 'tokenizer']
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


def images_only_processor_class(processor_class: Any) -> Any:
    """A subclass of a transformers processor class that has no video processor.

    ``ProcessorMixin`` takes its sub-processors from ``get_attributes()``; without
    ``"video_processor"`` there, the class is built, saved and loaded (``from_pretrained``)
    with an image processor and a tokenizer only; its ``__call__`` is the parent's. It
    keeps the parent's name, so a saved processor names the real class.

    Args:
        processor_class: e.g. ``transformers.InternVLProcessor``.

    Returns:
        The subclass (cached: one per parent class).
    """
    cached = _IMAGES_ONLY.get(processor_class)
    if cached is not None:
        return cached

    class ImagesOnly(processor_class):
        @classmethod
        def get_attributes(cls) -> list[str]:
            return [a for a in super().get_attributes() if a != "video_processor"]

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = processor_class.__name__
    ImagesOnly.__module__ = processor_class.__module__
    _IMAGES_ONLY[processor_class] = ImagesOnly
    return ImagesOnly


_IMAGES_ONLY: dict[Any, Any] = {}

"""`EvalItem`: one item of an evaluation task (an image, an optional question, its references).

Example:
    >>> item = EvalItem("q1", "COCO_val2014_000000000042.jpg", "what colour?", ("red",) * 10)
    >>> item.question, len(item.references)
    ('what colour?', 10)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlm_lens.data.examples import ImageSource
from vlm_lens.errors import VLMInputError
from vlm_lens.images import to_rgb

__all__ = ["EvalItem", "load_item_image"]


@dataclass(frozen=True)
class EvalItem:
    """One evaluation item.

    Attributes:
        id: stable unique id (the VQA ``question_id``, the caption image's id, or the image
            path for classification), as a string.
        image: the image: a path (opened lazily), a PIL image or an ``[H, W, 3]`` uint8 array.
        question: the question (VQA only).
        references: VQA: the ten annotator answers; captions: the reference captions.
        label: the class label (classification only).

    Example:
        >>> EvalItem("cat/1.png", "cat/1.png", label="cat").label
        'cat'
    """

    id: str
    image: ImageSource
    question: str | None = None
    references: tuple[str, ...] = ()
    label: str | None = None


def load_item_image(item: EvalItem) -> Image.Image:
    """The item's image as an 8-bit RGB PIL image (a path is opened; arrays and other modes are
    converted by `vlm_lens.images.to_rgb`, which refuses what it would have to guess).

    Raises:
        VLMInputError: if the file is missing or is not an image, naming the item.

    Example:
        >>> load_item_image(EvalItem("x", np.zeros((4, 6, 3), np.uint8))).size
        (6, 4)
        >>> load_item_image(EvalItem("x", "no/such.jpg"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        vlm_lens.errors.VLMInputError: the image no/such.jpg of item 'x' cannot be opened ...
    """
    image = item.image
    try:
        if isinstance(image, (str, os.PathLike)):
            with Image.open(image) as opened:
                opened.load()
                return to_rgb(opened)
        if isinstance(image, (np.ndarray, Image.Image)):
            return to_rgb(image)
    except (UnidentifiedImageError, OSError) as exc:
        raise VLMInputError(
            f"the image {image} of item {item.id!r} cannot be opened ({exc}); replace or remove it"
        ) from None
    raise VLMInputError(
        f"the image of item {item.id!r} is a {type(image).__name__}; expected a path, a PIL image "
        "or an [H, W, 3] uint8 array"
    )

"""`EvalItem`: one item of an evaluation task (an image, an optional question, its references).

Example:
    >>> item = EvalItem("q1", "COCO_val2014_000000000042.jpg", "what colour?", ("red",) * 10)
    >>> item.question, len(item.references)
    ('what colour?', 10)
"""

from __future__ import annotations

from dataclasses import dataclass

from vlm_lens.data.examples import ImageSource

__all__ = ["EvalItem"]


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

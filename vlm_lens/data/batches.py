"""`prepare_batches`: many prompts as batches sized from free memory, for sweeps and analyses.

The sweeps (`knockout_sweep`, `attention_share`, ...) take an iterable of batches and run each
batch in one forward (a patching sweep, one `PatchPair` per batch pair). `prepare_batches` cuts a
list of images and prompts into such batches, as many prompts per batch as fit in a share of the
free memory (`vlm_lens.engine.memory.auto_batch_size`, counting the prefix cache a sweep keeps),
with right padding by default so that every prompt's image starts at the same position and the
whole batch can share one prefix.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("chameleon")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> images = [sample_image(seed=i, size=tiny.image_size) for i in range(5)]
    >>> [len(b) for b in prepare_batches(model, images, tiny.prompt, batch_size=2)]
    [2, 2, 1]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

from vlm_lens.batch import Batch
from vlm_lens.engine.memory import auto_batch_size
from vlm_lens.errors import VLMInputError


def prepare_batches(
    model: Any,
    images: Sequence[Any],
    text: str | Sequence[str],
    *,
    batch_size: int | Literal["auto"] = "auto",
    padding_side: str = "right",
    kv_cache: bool = True,
) -> Iterator[Batch]:
    """Prepare ``(image, prompt)`` pairs in consecutive batches.

    Args:
        model: the `HookedVLM`.
        images: one entry per prompt: an image, or a list of images for a multi-image prompt.
        text: one prompt for every image, or one prompt per entry of `images`.
        batch_size: prompts per batch, or ``"auto"``: as many as `auto_batch_size` allows for
            the longest of the first four prompts.
        padding_side: ``"right"`` (default: images at the same positions, so sweeps share one
            prefix per batch) or ``"left"``.
        kv_cache: count the prefix cache a sweep keeps when sizing ``"auto"`` batches.

    Yields:
        `Batch` objects, in order.

    Raises:
        VLMInputError: when `text` is a list of another length than `images`, or for a
            non-positive `batch_size`.
    """
    texts = [text] * len(images) if isinstance(text, str) else list(text)
    if len(texts) != len(images):
        raise VLMInputError(
            f"{len(images)} images but {len(texts)} prompts; give one prompt for all images or "
            "one per image"
        )
    if batch_size == "auto":
        sample = range(min(4, len(images)))
        lengths = [_length(model, images[i], texts[i]) for i in sample]
        size = auto_batch_size(model, max(lengths, default=1), kv_cache=kv_cache)
    else:
        size = int(batch_size)
    if size < 1:
        raise VLMInputError(f"batch_size must be positive or 'auto', got {batch_size!r}")
    for start in range(0, len(images), size):
        chunk = list(images[start : start + size])
        yield model.prepare(
            images=chunk, text=texts[start : start + size], padding_side=padding_side
        )


def _length(model: Any, images: Any, text: str) -> int:
    return int(model.prepare(images=images, text=text).input_ids.shape[1])

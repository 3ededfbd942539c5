"""Prompts the role checks run on: one image, padded batches, two images apart and adjacent."""

from __future__ import annotations

from typing import Any

from tests.conftest import Wrapped
from vlm_lens.batch import Batch
from vlm_lens.testing import ImageFrame, sample_image

SCENARIOS = ("one", "padded-right", "padded-left", "two-images", "adjacent-images")
UNPADDED = ("one", "two-images", "adjacent-images")


def frame_of(w: Wrapped) -> ImageFrame:
    assert w.registered is not None
    return w.registered.frame


def images_for(w: Wrapped, n: int) -> list[Any]:
    """`n` sample images, cycling through the variant's registered sizes (Emu3's differ, so
    that grids differ)."""
    assert w.registered is not None
    sizes = w.registered.image_sizes or (w.tiny.image_size,)
    return [sample_image(i, sizes[i % len(sizes)]) for i in range(n)]


def make_batch(w: Wrapped, scenario: str) -> Batch:
    ph, prompt = w.model.image_placeholder, w.tiny.prompt
    if scenario == "one":
        return w.model.prepare(images=images_for(w, 1)[0], text=prompt)
    if scenario.startswith("padded"):
        texts = [prompt, prompt + " Describe it in a few more words."]
        side = scenario.split("-")[1]
        return w.model.prepare(images=images_for(w, 2), text=texts, padding_side=side)
    if scenario == "two-images":
        return w.model.prepare(images=[images_for(w, 2)], text=[f"First {ph} then {ph} ok"])
    if scenario == "adjacent-images":
        return w.model.prepare(images=[images_for(w, 2)], text=[f"Both:{ph}{ph}?"])
    raise AssertionError(scenario)


def per_image(w: Wrapped) -> int:
    """Placeholders the processor writes for one image of the tiny model's own size."""
    one = w.tiny.processor(
        images=[sample_image(0, w.tiny.image_size)], text=[w.tiny.prompt], return_tensors="pt"
    )
    return int((one["input_ids"] == w.tiny.tokenizer.image_token_id).sum())

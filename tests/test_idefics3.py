"""Idefics3 / SmolVLM specifics the contract suite does not reach: images counted as the tiles
HF's vision tower encodes (all-zero padding tiles aside), tiles checked per sequence, and the
roles of adjacent tiled images read without a tokenizer."""

from __future__ import annotations

import copy

import pytest
import torch

from vlm_lens import HookedVLM, VLMInputError
from vlm_lens.testing import build_tiny, sample_image

FAMILIES = ("idefics3", "smolvlm")


@pytest.fixture(scope="module", params=FAMILIES)
def wrapped(request: pytest.FixtureRequest) -> tuple[HookedVLM, torch.nn.Module]:
    tiny = build_tiny(request.param)
    reference = copy.deepcopy(tiny.model)
    return HookedVLM.from_hf(tiny.model, tiny.processor), reference


def _padded(model: HookedVLM):  # 2 x 2 + global (5 tiles) and 1 x 2 + global (3 tiles)
    images = [sample_image(0, (32, 32)), sample_image(1, (16, 32))]
    return model.prepare(images=images, text=["<image>Hi", "<image>Hi there"])


def test_count_images_is_the_tiles_hf_encodes(wrapped) -> None:
    model, reference = wrapped
    batch = _padded(model)
    assert batch.inputs["pixel_values"].shape[:2] == (2, 5)  # the 3-tile row is padded
    seen: list[int] = []
    tower = reference.model.vision_model
    handle = tower.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(int(kwargs["pixel_values"].shape[0])),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            reference(**batch.inputs)
    finally:
        handle.remove()
    assert seen == [model.adapter.count_images(batch.inputs)] == [8]


def test_tiles_are_checked_per_sequence(wrapped) -> None:
    """Swapped pixel rows keep the total (HF would run, with each image in the other
    sequence's placeholders) but not the tiles of each sequence."""
    model, _ = wrapped
    inputs = dict(_padded(model).inputs)
    for key in ("pixel_values", "pixel_attention_mask"):
        inputs[key] = inputs[key].flip(0)
    with pytest.raises(VLMInputError, match=r"\[3, 5\] per sequence.*hold \[5, 3\]"):
        model(inputs)


def test_adjacent_images_without_a_tokenizer(wrapped) -> None:
    model, reference = wrapped
    images = [sample_image(0, (32, 16)), sample_image(1, (16, 32)), sample_image(2, (32, 32))]
    batch = model.prepare(images=[images], text=["Three:<image><image>\n<image>!"])
    assert batch.layout.n_images == [3]
    bare = HookedVLM.from_hf(reference).batch_from_inputs(batch.inputs).layout
    assert torch.equal(bare.role_bits, batch.layout.role_bits)
    assert torch.equal(bare.image_index, batch.layout.image_index)
    assert bare.spans == batch.layout.spans
    # each image: one span, its closing <fake_token_around_image> the gate
    fake = model.processor.tokenizer.convert_tokens_to_ids("<fake_token_around_image>")
    gates = batch.layout.positions("gate")[0].tolist()
    assert gates == [s.end + 1 for s in batch.layout.spans[0]]
    assert all(int(batch.input_ids[0, g]) == fake for g in gates)

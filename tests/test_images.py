"""Image inputs: every kind is converted by one stated rule or refused with the fix
(`vlm_lens.images.to_rgb`), on every path that takes an image (`HookedVLM.prepare`,
`vlm_lens.data.load_image`, `vlm_lens.evaluate.load_item_image`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.data.examples import load_image
from vlm_lens.errors import VLMInputError
from vlm_lens.evaluate.items import EvalItem, load_item_image
from vlm_lens.images import to_rgb
from vlm_lens.testing import build_tiny

RNG = np.random.default_rng(0)


def _expected_8bit(values: np.ndarray, top: float) -> np.ndarray:
    """The rule written out independently: round(v * 255 / top), as RGB."""
    grey = np.array([[round(float(v) * 255 / top) for v in row] for row in values], np.uint8)
    return np.stack([grey] * 3, axis=-1) if grey.ndim == 2 else grey


def test_sixteen_bit_png_is_scaled_not_clipped_to_white(tmp_path: Path) -> None:
    values = RNG.integers(0, 65536, size=(5, 7)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as opened:
        assert opened.mode.startswith("I")  # what PIL gives for a 16-bit PNG
    expected = _expected_8bit(values, 65535)
    assert np.array_equal(np.asarray(load_image(path)), expected)
    assert np.array_equal(np.asarray(load_item_image(EvalItem("x", str(path)))), expected)
    assert np.array_equal(np.asarray(to_rgb(values)), expected)
    assert len(np.unique(expected)) > 1  # not all white


def test_float_arrays_are_taken_in_zero_one_and_refused_outside() -> None:
    values = RNG.random((4, 3))
    assert np.array_equal(np.asarray(to_rgb(values)), _expected_8bit(values, 1.0))
    dark = RNG.integers(0, 40, size=(4, 3)).astype(np.float32)  # a dark 0..255 image
    dark[0, 0] = 2.0
    with pytest.raises(VLMInputError, match=r"\[0, 1\].*astype\(np.uint8\)"):
        to_rgb(dark)
    with pytest.raises(VLMInputError, match=r"\[0, 1\]"):
        to_rgb(-values)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused_with_where(bad: float) -> None:
    values = RNG.random((4, 4, 3))
    values[2, 1, 0] = bad
    with pytest.raises(VLMInputError, match=r"1 NaN or infinite value\(s\) \(first at \(2, 1, 0\)"):
        to_rgb(values)


def test_integer_arrays() -> None:
    small = RNG.integers(0, 256, size=(3, 3, 3))
    assert np.array_equal(np.asarray(to_rgb(small)), small.astype(np.uint8))
    with pytest.raises(VLMInputError, match="outside 0..255"):
        to_rgb(small * 300)
    with pytest.raises(VLMInputError, match="boolean"):
        to_rgb(small > 100)


def test_shapes() -> None:
    rgba = RNG.integers(0, 256, size=(3, 5, 4)).astype(np.uint8)
    assert np.array_equal(np.asarray(to_rgb(rgba)), rgba[..., :3])
    one = RNG.integers(0, 256, size=(3, 5, 1)).astype(np.uint8)
    assert np.array_equal(np.asarray(to_rgb(one)), np.repeat(one, 3, axis=-1))
    with pytest.raises(VLMInputError, match=r"channels-first: pass array.transpose\(1, 2, 0\)"):
        to_rgb(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(VLMInputError, match=r"\[H, W, 3\]"):
        to_rgb(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(VLMInputError, match="PIL images or numpy arrays"):
        to_rgb(torch.zeros(8, 8, 3))


def test_pil_modes() -> None:
    rgba = Image.fromarray(RNG.integers(0, 256, size=(4, 4, 4)).astype(np.uint8), "RGBA")
    assert np.array_equal(np.asarray(to_rgb(rgba)), np.asarray(rgba.convert("RGB")))
    with pytest.raises(VLMInputError, match="mode 'F'"):
        to_rgb(Image.fromarray(RNG.random((4, 4)).astype(np.float32), "F"))


def test_prepare_uses_the_rule_and_refuses_bad_pixels() -> None:
    tiny = build_tiny("llava")
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    height, width = tiny.image_size
    deep = RNG.integers(0, 65536, size=(height, width)).astype(np.uint16)
    eight = _expected_8bit(deep, 65535)
    got = model.prepare(images=deep, text=tiny.prompt).inputs["pixel_values"]
    want = model.prepare(images=eight, text=tiny.prompt).inputs["pixel_values"]
    assert torch.equal(got, want)
    broken = RNG.random((height, width, 3))
    broken[0, 0, 0] = np.nan
    with pytest.raises(VLMInputError, match="NaN"):
        model.prepare(images=broken, text=tiny.prompt)

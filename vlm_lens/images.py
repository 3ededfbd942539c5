"""Turning what a user passes as an image into the 8-bit RGB picture the processor expects.

One rule per input kind, and an error naming the problem and the fix wherever a guess would be
needed (no image is ever silently turned white, black or rescaled by a heuristic):

- **PIL images.** 8-bit modes (``RGB``, ``L``, ``P``, ``RGBA``, ``LA``, ``CMYK``, ...) convert to
  RGB as PIL does (alpha is dropped). 16-bit modes (``I;16``, ``I;16B``, ``I;16L``, and ``I``
  with values within 0..65535, which is how PIL opens 16-bit PNGs) are scaled by 255/65535 and
  rounded. Float (``F``) images are refused: their range is unknown.
- **numpy arrays** ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` (alpha dropped):
  ``uint8`` as is; ``uint16`` scaled by 255/65535; other integer types only with values within
  0..255; floats only finite and within [0, 1] (the convention of matplotlib, scikit-image and
  torchvision's ``to_tensor``), scaled by 255 and rounded. A float array with values above 1 is
  refused rather than guessed to be 0..255 data (a dark 0..255 image and a [0, 1] image cannot
  be told apart); channels-first ``[3, H, W]`` arrays are refused with the transpose to apply.

Example:
    >>> import numpy as np
    >>> to_rgb(np.full((2, 2), 65535, np.uint16)).getpixel((0, 0))
    (255, 255, 255)
    >>> to_rgb(np.full((2, 2, 3), 0.5)).getpixel((0, 0))
    (128, 128, 128)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from vlm_lens.errors import VLMInputError

__all__ = ["to_rgb"]

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(image: Any) -> Image.Image:
    """An 8-bit RGB PIL image of `image` (a PIL image or a numpy array; rules in the module doc).

    Raises:
        VLMInputError: for a float PIL image, an array of another shape, a float array with
            NaN, inf or values outside [0, 1], an integer array outside its range, or any
            other type; each message says what to pass instead.

    Example:
        >>> from PIL import Image
        >>> to_rgb(Image.new("L", (3, 2), 7)).mode, to_rgb(Image.new("L", (3, 2), 7)).size
        ('RGB', (3, 2))
    """
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return Image.fromarray(_to_uint8(_channels_last(image)))
    raise VLMInputError(
        f"images must be PIL images or numpy arrays, got {type(image).__name__}; load files "
        "with PIL.Image.open(path)"
    )


def _from_pil(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT or image.mode == "I":
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise VLMInputError(
                f"a PIL image of mode {image.mode!r} holds values {values.min()}..{values.max()}, "
                "outside the 16-bit range 0..65535; convert it to 8-bit RGB yourself "
                "(image.convert('RGB') after scaling)"
            )
        return Image.fromarray(_scale(values, 65535)).convert("RGB")
    if image.mode == "F":
        raise VLMInputError(
            "a PIL image of mode 'F' (32-bit float) has no known range; pass "
            "np.asarray(image) scaled to [0, 1], or an 8-bit image"
        )
    return image.convert("RGB")


def _channels_last(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        raise VLMInputError(
            f"an image array must be channels-last [H, W, 3]; got shape {array.shape}, which "
            "looks channels-first: pass array.transpose(1, 2, 0)"
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise VLMInputError(
            f"an image array must be [H, W, 3] (or [H, W], [H, W, 1], [H, W, 4]); got shape "
            f"{array.shape}"
        )
    return array[..., :3]


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return _scale(array, 65535)
    if array.dtype == np.bool_:
        raise VLMInputError(
            "a boolean image array has no brightness scale; pass array.astype(np.uint8) * 255"
        )
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise VLMInputError(
                f"an integer image array of dtype {array.dtype} holds values "
                f"{array.min()}..{array.max()}, outside 0..255; pass uint8 data (or uint16 for "
                "16-bit images)"
            )
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            raise VLMInputError(
                f"an image array holds {int(bad.sum())} NaN or infinite value(s) (first at "
                f"{tuple(int(i) for i in np.argwhere(bad)[0])}); fix or mask them first"
            )
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise VLMInputError(
                f"a float image array must hold values in [0, 1]; got {array.min():g}.."
                f"{array.max():g}. For 0..255 data pass array.astype(np.uint8); otherwise "
                "scale it to [0, 1]"
            )
        return _scale(array, 1.0)
    raise VLMInputError(f"an image array of dtype {array.dtype} is not an image; pass uint8 data")


def _scale(array: np.ndarray, top: float) -> np.ndarray:
    """Values in ``0..top`` to uint8 ``0..255``, rounded half to even."""
    return np.rint(np.asarray(array, dtype=np.float64) * (255.0 / top)).astype(np.uint8)

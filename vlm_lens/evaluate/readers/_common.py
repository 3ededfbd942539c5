"""Shared pieces of the readers: JSON files, shape checks, the paper's sampling, image files."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vlm_lens.errors import VLMInputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""File suffixes (lower-cased) the readers take for images."""


def existing_file(path: str | os.PathLike[str], what: str) -> Path:
    """`path` as a Path, or a VLMInputError naming `what` it should be."""
    p = Path(path)
    if not p.is_file():
        raise VLMInputError(f"{what} {p} does not exist (or is not a file); check the path")
    return p


def existing_dir(path: str | os.PathLike[str], what: str) -> Path:
    """`path` as a Path, or a VLMInputError naming `what` it should be."""
    p = Path(path)
    if not p.is_dir():
        raise VLMInputError(f"{what} {p} does not exist (or is not a folder); check the path")
    return p


def load_json(path: str | os.PathLike[str], what: str) -> Any:
    """The parsed JSON of `path`; missing or invalid files raise VLMInputError."""
    p = existing_file(path, what)
    try:
        with p.open("rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VLMInputError(
            f"{what} {p} is not valid JSON ({exc}); is it the right file?"
        ) from None


def shape_error(path: Path, what: str, expected: str, detail: str) -> VLMInputError:
    """The error for a JSON file whose structure is not the expected one."""
    return VLMInputError(f"{path} is not {what}: {detail}; expected {expected}")


def require(
    record: Any, keys: Sequence[str], path: Path, what: str, expected: str, where: str
) -> None:
    """Raise `shape_error` unless `record` is a dict with every key of `keys`."""
    if not isinstance(record, dict):
        detail = f"{where} is a {type(record).__name__}, not an object"
        raise shape_error(path, what, expected, detail)
    missing = [key for key in keys if key not in record]
    if missing:
        detail = (
            f"{where} has no {', '.join(repr(m) for m in missing)} (its keys: {sorted(record)})"
        )
        raise shape_error(path, what, expected, detail)


def check_limit(limit: int | None) -> None:
    """A limit is None (everything / the task default) or an int >= 1."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise VLMInputError(f"limit must be a positive number of items or None; got {limit!r}")


def random_subset(n: int, limit: int | None, seed: int) -> list[int]:
    """Indices of `limit` of `n` items drawn with ``random.Random(seed).sample``, in file order;
    all of them (in order) when `limit` is None or at least `n`.

    Example:
        >>> random_subset(5, None, 42), random_subset(5, 9, 42)
        ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
        >>> random_subset(10, 3, 42) == sorted(random.Random(42).sample(range(10), 3))
        True
    """
    check_limit(limit)
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def first(n: int, limit: int | None) -> list[int]:
    """Indices of the first `limit` of `n` items (all when `limit` is None)."""
    check_limit(limit)
    return list(range(n if limit is None else min(n, limit)))


def check_image(path: Path, what: str) -> Path:
    """`path` if it is an image file PIL can identify (only the header is read)."""
    if not path.is_file():
        raise VLMInputError(f"the image {path} of {what} does not exist; check the image folder")
    try:
        with Image.open(path) as opened:
            opened.size  # noqa: B018 - reading the header is the check
    except (UnidentifiedImageError, OSError) as exc:
        raise VLMInputError(
            f"the image {path} of {what} cannot be opened as an image ({exc}); replace or "
            "remove the file"
        ) from None
    return path

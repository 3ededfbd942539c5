"""CIDEr-D through pycocoevalcap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["cider"]


def cider(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> float:
    """Corpus CIDEr-D of `predictions` against `references` (pycocoevalcap)."""
    raise NotImplementedError

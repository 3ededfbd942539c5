"""Checking token ids that analyses score against (class names, targets) before they run.

A negative id would read the last vocabulary entries (Python indexing) and an id past the
vocabulary would score nothing; both are refused, naming the argument and the vocabulary size.

Example:
    >>> check_token_ids([3, 4], 10, "targets")
    >>> check_token_ids([-1], 10, "targets")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    vlm_lens.errors.VLMInputError: targets holds token id(s) [-1] outside the vocabulary 0..9; ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from vlm_lens.errors import VLMInputError

__all__ = ["check_token_ids", "vocabulary_size"]


def vocabulary_size(model: Any) -> int:
    """The number of logits the model scores (its output embedding's rows)."""
    head = model.hf_model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.cfg.d_vocab)


def check_token_ids(ids: int | Sequence[int] | Tensor, vocab: int, name: str) -> None:
    """Raise `VLMInputError` unless every id in `ids` lies in ``0 .. vocab - 1``."""
    values = torch.as_tensor(ids).reshape(-1)
    if values.is_floating_point() or values.dtype == torch.bool:
        raise VLMInputError(f"{name} must hold integer token ids, got dtype {values.dtype}")
    wrong = values[(values < 0) | (values >= vocab)]
    if wrong.numel():
        shown = sorted({int(v) for v in wrong})[:5]
        raise VLMInputError(
            f"{name} holds token id(s) {shown} outside the vocabulary 0..{vocab - 1}; look the "
            "ids up with model.tokenizer"
        )

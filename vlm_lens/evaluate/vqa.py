"""VQAv2 accuracy as the official evaluation (``vqaEval.py``) computes it."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["vqa_accuracy"]


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against the annotators' answers."""
    raise NotImplementedError

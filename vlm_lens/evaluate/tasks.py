"""The paper's Table 1 tasks: readers, prompts, generation lengths and scoring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlm_lens.evaluate.items import EvalItem

__all__ = ["TASKS", "Task"]


@dataclass(frozen=True)
class Task:
    """One evaluation task."""

    name: str
    metric: str
    prompt: str | None
    max_new_tokens: int

    def read(self, data: str | Path, *, limit: int | None = None, seed: int = 42) -> list[EvalItem]:
        """The task's items read from `data`."""
        raise NotImplementedError

    def score(self, predictions: Mapping[str, str], items: Sequence[EvalItem]) -> float:
        """The task's metric of `predictions` (item id -> generated text) on `items`."""
        raise NotImplementedError


VQA_PROMPT = "{question}\nAnswer the question using a single word or phrase."
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."

TASKS: Mapping[str, Task] = {
    "vqav2": Task("vqav2", "vqa_accuracy", VQA_PROMPT, 20),
    "coco-captions": Task("coco-captions", "cider", CAPTION_PROMPT, 60),
    "flickr30k": Task("flickr30k", "cider", CAPTION_PROMPT, 60),
    "imagenet-chi": Task("imagenet-chi", "chi_out", None, 0),
}

"""The paper's Table 1 tasks: how each reads its data, its prompt, its generation length, its
metric.

=================  ==============  ========================================================  ===
task               metric          prompt (paper, section 2(d))                              max
=================  ==============  ========================================================  ===
``vqav2``          `vqa_accuracy`  ``{question}\\nAnswer the question using a single word or  20
                                   phrase.``
``coco-captions``  `cider`         ``Provide a one-sentence caption for the provided image.`` 60
``flickr30k``      `cider`         same                                                      60
``imagenet-chi``   `chi_out`       none: χ of the last token's final-layer residual          0
=================  ==============  ========================================================  ===

The prompts are the text after the image; the runner puts the model's image placeholder (and
chat template) around them. Default samples are the paper's: 2,000 VQAv2 questions drawn with
seed 42, the first 2,000 test images of a caption set, every image of a class-folder set.

Example:
    >>> task = TASKS["vqav2"]
    >>> task.metric, task.max_new_tokens, task.default_limit
    ('vqa_accuracy', 20, 2000)
    >>> print(task.prompt_text(EvalItem("1", "x.jpg", question="what colour is it?")))
    what colour is it?
    Answer the question using a single word or phrase.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jaxtyping import Float
from torch import Tensor

from vlm_lens.errors import VLMInputError
from vlm_lens.evaluate.chi import chi_out
from vlm_lens.evaluate.cider_score import cider
from vlm_lens.evaluate.items import EvalItem
from vlm_lens.evaluate.readers import (
    PAPER_CAPTION_IMAGES,
    PAPER_VQA_QUESTIONS,
    is_hf_dataset_dir,
    load_hf_dataset,
    read_class_folders,
    read_hf_dataset,
    read_karpathy,
    read_karpathy_folder,
    read_vqav2_folder,
)
from vlm_lens.evaluate.readers.karpathy import image_roots
from vlm_lens.evaluate.vqa import vqa_accuracy
from vlm_lens.metrics.neighbourhood import Average

__all__ = ["CAPTION_PROMPT", "CHI_K", "TASKS", "VQA_PROMPT", "Task"]

VQA_PROMPT = "{question}\nAnswer the question using a single word or phrase."
"""The paper's VQAv2 prompt (after the image)."""

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
"""The paper's captioning prompt (after the image)."""

CHI_K = 30
"""Neighbours of the paper's χ_out."""

Kind = Literal["vqa", "captions", "classes"]


@dataclass(frozen=True)
class Task:
    """One evaluation task.

    Attributes:
        name: ``"vqav2"``, ``"coco-captions"``, ``"flickr30k"`` or ``"imagenet-chi"``.
        metric: ``"vqa_accuracy"``, ``"cider"`` or ``"chi_out"``.
        prompt: the paper's prompt, with a ``{question}`` field for VQA; ``None`` for χ.
        max_new_tokens: greedy generation length (20 VQA, 60 captions, 0 for χ).
        kind: the data kind (``"vqa"``, ``"captions"``, ``"classes"``).
        default_limit: how many items `read` takes when `limit` is None (``None``: all).
        karpathy_file: the Karpathy-split JSON name a caption task looks for in its folder.
        random_draws: how many random-image-token draws the paper averages (5 VQA, 3 captions).
    """

    name: str
    metric: str
    prompt: str | None
    max_new_tokens: int
    kind: Kind = "vqa"
    default_limit: int | None = None
    karpathy_file: str | None = None
    random_draws: int = 1

    def read(
        self, data: str | Path | Any, *, limit: int | None = None, seed: int = 42
    ) -> list[EvalItem]:
        """The task's items read from `data`.

        Args:
            data: a folder in the task's format (VQAv2: the questions and annotations JSON and
                the images; captions: the Karpathy-split JSON, or its path, and the images;
                χ: one folder per class), a ``datasets`` ``save_to_disk`` folder, or a
                ``datasets.Dataset``.
            limit: how many items; ``None``: `default_limit` (the paper's sample).
            seed: the seed of the VQA (and class-folder) draw; the paper's is 42.

        Raises:
            VLMInputError: bad or missing data (the message names the file and the fix).
        """
        limit = self.default_limit if limit is None else limit
        if not isinstance(data, (str, os.PathLike)):
            return read_hf_dataset(data, self.kind, limit=limit, seed=seed)
        path = Path(data)
        if is_hf_dataset_dir(path):
            return read_hf_dataset(
                load_hf_dataset(path, self.kind), self.kind, limit=limit, seed=seed
            )
        if self.kind == "vqa":
            return read_vqav2_folder(path, limit=limit, seed=seed)
        if self.kind == "captions":
            if path.is_file():
                return read_karpathy(path, image_roots(path.parent), limit=limit)
            return read_karpathy_folder(path, self.karpathy_file, limit=limit)
        return read_class_folders(path, limit=limit, seed=seed)

    def prompt_text(self, item: EvalItem) -> str:
        """The task's prompt for `item` (the text after the image).

        Raises:
            VLMInputError: for χ (no prompt) or a VQA item without a question.
        """
        if self.prompt is None:
            raise VLMInputError(
                f"{self.name} has no prompt of its own: χ_out reads the last token's residual of "
                "whatever prompt the runner gives"
            )
        if "{question}" in self.prompt:
            if item.question is None:
                raise VLMInputError(f"item {item.id!r} has no question; {self.name} needs one")
            return self.prompt.format(question=item.question)
        return self.prompt

    def score(self, predictions: Mapping[str, str], items: Sequence[EvalItem]) -> float:
        """The task's metric of `predictions` (item id -> generated text) on `items`.

        VQA: the mean of `vqa_accuracy` over the items; captions: corpus `cider` over them.

        Raises:
            VLMInputError: an item without a prediction, no items, or a χ task (use
                `score_representations`).
        """
        if self.metric == "chi_out":
            raise VLMInputError(
                f"{self.name} is scored on representations, not on generated text; use "
                "Task.score_representations"
            )
        if not items:
            raise VLMInputError(f"{self.name}: no items to score")
        missing = [item.id for item in items if item.id not in predictions]
        if missing:
            raise VLMInputError(
                f"{len(missing)} of {len(items)} items have no prediction (first: {missing[0]!r}); "
                "finish the run or score only the predicted items"
            )
        if self.metric == "vqa_accuracy":
            total = sum(vqa_accuracy(predictions[item.id], item.references) for item in items)
            return total / len(items)
        return cider(
            {item.id: predictions[item.id] for item in items},
            {item.id: item.references for item in items},
        )

    def score_representations(
        self,
        representations: Float[Tensor, "n d"],
        items: Sequence[EvalItem],
        k: int = CHI_K,
        average: Average = "class",
    ) -> float:
        """`chi_out` of one representation per item (rows in item order) with their labels.

        `average` is `chi_out`'s: ``"class"`` (the paper's) or ``"sample"``.

        Raises:
            VLMInputError: an item without a label, or χ undefined (see `chi_out`).
        """
        unlabelled = [item.id for item in items if item.label is None]
        if unlabelled:
            raise VLMInputError(f"item {unlabelled[0]!r} has no label; χ_out needs labelled images")
        return chi_out(representations, [str(item.label) for item in items], k=k, average=average)


TASKS: Mapping[str, Task] = {
    "vqav2": Task("vqav2", "vqa_accuracy", VQA_PROMPT, 20, "vqa", PAPER_VQA_QUESTIONS, None, 5),
    "coco-captions": Task(
        "coco-captions",
        "cider",
        CAPTION_PROMPT,
        60,
        "captions",
        PAPER_CAPTION_IMAGES,
        "dataset_coco.json",
        3,
    ),
    "flickr30k": Task(
        "flickr30k",
        "cider",
        CAPTION_PROMPT,
        60,
        "captions",
        PAPER_CAPTION_IMAGES,
        "dataset_flickr30k.json",
        3,
    ),
    "imagenet-chi": Task("imagenet-chi", "chi_out", None, 0, "classes", None, None, 1),
}
"""Task name -> `Task`, the four columns of the paper's Table 1."""

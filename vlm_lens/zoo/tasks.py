"""The organisms' tasks: prompt formats and question-answering accuracy.

Both organisms see the same prompts, built from world scenes (`vlm_lens.world`):

* question answering: ``"<image>what colour is the shape?"`` → ``"red"``;
* captioning: ``"<image>describe the image."`` → ``"a large red circle at the top left."``;
* drawing (the native organism only): ``"draw a large red circle at the top left."`` followed by
  the image.

`answer_accuracy` runs greedy generation on held-out scenes, optionally under an intervention
built per batch (a knockout, a patch), and reports accuracy per question kind.

Example:
    >>> from vlm_lens.world import generate_scene
    >>> scene = generate_scene(0, "test", max_objects=1)
    >>> question_prompt(scene.qa[0].question, "<image>")
    '<image>what colour is the shape?'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from vlm_lens import world
from vlm_lens.batch import Batch
from vlm_lens.data.distributed import map_shared

TASK_WORDS: tuple[str, ...] = ("describe", "draw", "image")
"""Words the task prompts add to the world's vocabulary."""


def vocabulary() -> tuple[str, ...]:
    """Every word of world text and task prompts, sorted (the organisms' plain vocabulary)."""
    return tuple(sorted({*world.vocabulary(), *TASK_WORDS}))


def question_prompt(question: str, placeholder: str) -> str:
    """The prompt of a question about the image: the image, then the question."""
    return f"{placeholder}{question}"


def caption_prompt(placeholder: str) -> str:
    """The captioning prompt."""
    return f"{placeholder}describe the image."


def draw_prompt(caption: str) -> str:
    """The drawing prompt (text before the image; the image tokens follow)."""
    return f"draw {caption}"


@dataclass(frozen=True)
class AnswerAccuracy:
    """Greedy question-answering accuracy on a set of scenes.

    Attributes:
        accuracy: kind -> fraction of questions answered exactly.
        counts: kind -> number of questions.
        answers: one row per question: ``(scene index, kind, question, answer, predicted)``.
    """

    accuracy: dict[str, float]
    counts: dict[str, int]
    answers: tuple[tuple[int, str, str, str, str], ...]

    @property
    def overall(self) -> float | None:
        """Accuracy over every question; ``None`` (undefined) when no question was asked."""
        total = sum(self.counts.values())
        if total == 0:
            return None
        return sum(self.accuracy[k] * self.counts[k] for k in self.counts) / total

    def to_frame(self) -> pd.DataFrame:
        """One row per kind: ``kind, accuracy, n``."""
        return pd.DataFrame(
            {
                "kind": list(self.accuracy),
                "accuracy": list(self.accuracy.values()),
                "n": [self.counts[k] for k in self.accuracy],
            }
        )


def answer_accuracy(
    model: Any,
    scenes: Iterable[world.Scene],
    *,
    kinds: Sequence[str] | None = None,
    batch_size: int = 32,
    intervention: Callable[[Batch], Any] | None = None,
    max_new_tokens: int = 3,
    progress: bool = False,
) -> AnswerAccuracy:
    """Ask every scene its questions of `kinds` and score the greedy answers.

    Args:
        model: a `HookedVLM` of an organism (or any model whose tokenizer has the world words).
        scenes: held-out scenes.
        kinds: question kinds to ask (default: every kind the scenes ask, local kinds in
            `vlm_lens.world.KINDS` order first, then the others as they first appear).
        batch_size: prompts per generate call.
        intervention: ``batch -> fwd_hooks`` applied during generation (e.g.
            ``lambda b: gate_knockout(b)``).
        max_new_tokens: answers are at most two words.
        progress: show a progress bar.

    Returns:
        An `AnswerAccuracy`.
    """
    scenes = list(scenes)
    if kinds is None:
        asked = dict.fromkeys(qa.kind for scene in scenes for qa in scene.qa)
        kinds = [k for k in world.KINDS if k in asked] + [k for k in asked if k not in world.KINDS]
    items = [(scene, qa) for scene in scenes for qa in scene.qa if qa.kind in kinds]
    placeholder = model.image_placeholder
    starts = list(range(0, len(items), batch_size))

    def step(start: int) -> list[tuple[int, str, str, str, str]]:
        chunk = items[start : start + batch_size]
        batch = model.prepare(
            images=[scene.image for scene, _ in chunk],
            text=[question_prompt(qa.question, placeholder) for _, qa in chunk],
            padding_side="left",
        )
        hooks = intervention(batch) if intervention is not None else ()
        with torch.no_grad():
            out = model.generate(batch, max_new_tokens=max_new_tokens, fwd_hooks=hooks)
        new = out[:, batch.input_ids.shape[1] :]
        return [
            (scene.index, qa.kind, qa.question, qa.answer, _decode_answer(model.tokenizer, ids))
            for (scene, qa), ids in zip(chunk, new.tolist(), strict=True)
        ]

    # inside `vlm_lens.data.distributed.sharded` the ranks of a launch share the batches
    rows = [
        row for part in map_shared(step, starts, desc="answers", progress=progress) for row in part
    ]
    accuracy: dict[str, float] = {}
    counts: dict[str, int] = {}
    for kind in kinds:
        hits = [r[3] == r[4] for r in rows if r[1] == kind]
        if hits:
            accuracy[kind] = sum(hits) / len(hits)
            counts[kind] = len(hits)
    return AnswerAccuracy(accuracy, counts, tuple(rows))


def _decode_answer(tokenizer: Any, ids: list[int]) -> str:
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()

"""Knockout conditions side by side: how much does each one change the next token?

The paper (section 2(c)) scores each knockout by task accuracy (VQA, CIDEr, χ). Without a task
the direct measure is what the knockout does to the model's prediction at the last position:

* **agreement**: the fraction of prompts whose top-1 next token is the baseline's;
* **similarity**: ``Σ_v min(p_v, q_v)`` between the knocked-out next-token distribution ``p`` and
  the baseline's ``q`` (1 = unchanged; the histogram intersection of the patching sweep);
* **accuracy** (when `targets` are given): the fraction of prompts whose top-1 token is the
  target (e.g. the first token of the class name or the answer).

The baseline condition (no hooks) is always measured first and always reads 1 for agreement
and similarity. `with_accuracy` replaces the accuracy by a task score computed elsewhere (for
the organisms: `vlm_lens.zoo.tasks.answer_accuracy` under the same knockouts). The conditions
of a batch run as one sweep (`vlm_lens.engine.sweep.run_sweep`): those that leave every image
token alone share the clean prefix, the others (a random image-token knockout) run in full.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("chameleon")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> images = [sample_image(seed=s, size=tiny.image_size) for s in range(2)]
    >>> batch = model.prepare(images=images, text=[tiny.prompt] * 2)
    >>> result = knockout_effect(model, batch)
    >>> result.conditions
    ('baseline', 'gate', 'image->text', 'random')
    >>> result.to_frame().columns.tolist()
    ['condition', 'agreement', 'similarity', 'accuracy', 'n_prompts']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from vlm_lens.analysis.persist import register_result
from vlm_lens.analysis.provenance import Provenance
from vlm_lens.analysis.token_ids import check_token_ids, vocabulary_size
from vlm_lens.batch import Batch
from vlm_lens.data.distributed import map_shared
from vlm_lens.engine.intervention import Intervention
from vlm_lens.engine.sweep import CLEAN, run_sweep
from vlm_lens.errors import VLMInputError
from vlm_lens.interventions.knockout import (
    gate_knockout,
    image_to_text_knockout,
    random_image_knockout,
)
from vlm_lens.metrics.distributions import softmax_intersection
from vlm_lens.model import HookedVLM

BASELINE = "baseline"
"""Name of the condition without hooks."""

ConditionBuilder = Callable[[Batch], Any] | None
"""Builds a condition's ``fwd_hooks`` for a batch (``None``: the baseline)."""
"""``batch -> fwd_hooks`` (an `Intervention`), or ``None`` for no intervention."""

DEFAULT_CONDITIONS: dict[str, ConditionBuilder] = {
    "gate": gate_knockout,
    "image->text": image_to_text_knockout,
    "random": lambda b: random_image_knockout(b, k=10, seed=0),
}
"""The paper's three conditions, every layer and head, ``mode="mask"``: no position reads the
gate; text after the image reads no image token (the gate stays readable); no position reads 10
random image tokens."""


@register_result
@dataclass(frozen=True, eq=False)
class KnockoutResult:
    """Effect of each knockout condition on the next token at the last position.

    Attributes:
        conditions: condition names, ``"baseline"`` first.
        agreement: ``[conditions]`` fraction of prompts whose top-1 token is the baseline's.
        similarity: ``[conditions]`` mean ``Σ min(p, q)`` to the baseline distribution.
        accuracy: ``[conditions]`` task accuracy, or ``None`` without targets.
        accuracy_label: what `accuracy` measures (e.g. ``"top-1 = target token"``).
        top1: ``[conditions, n_prompts]`` top-1 token id per prompt.
        n_prompts: prompts measured.
        meta: what produced the result: model, inputs, settings (`vlm_lens.analysis.provenance`);
            `save_result` keeps it.

    Example:
        >>> r = KnockoutResult(("baseline", "gate"), np.ones(2), np.ones(2), None, "",
        ...                    np.zeros((2, 3), dtype=np.int64), 3)
        >>> bool(r.to_frame()["accuracy"].isna().all())
        True
    """

    conditions: tuple[str, ...]
    agreement: np.ndarray
    similarity: np.ndarray
    accuracy: np.ndarray | None
    accuracy_label: str
    top1: np.ndarray
    n_prompts: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """One row per condition: ``condition, agreement, similarity, accuracy, n_prompts``."""
        accuracy = (
            self.accuracy if self.accuracy is not None else np.full(len(self.conditions), np.nan)
        )
        return pd.DataFrame(
            {
                "condition": list(self.conditions),
                "agreement": self.agreement,
                "similarity": self.similarity,
                "accuracy": accuracy,
                "n_prompts": self.n_prompts,
            }
        )

    def with_accuracy(self, accuracy: Mapping[str, float], label: str) -> KnockoutResult:
        """The same result with `accuracy` (condition -> score) measured elsewhere.

        Example:
            >>> r = KnockoutResult(("baseline",), np.ones(1), np.ones(1), None, "",
            ...                    np.zeros((1, 1), dtype=np.int64), 1)
            >>> r.with_accuracy({"baseline": 0.9}, "answers").accuracy.tolist()
            [0.9]
        """
        missing = [c for c in self.conditions if c not in accuracy]
        if missing:
            raise ValueError(
                f"accuracy lacks the conditions {missing}; give one score per condition of "
                f"{list(self.conditions)}"
            )
        values = np.array([float(accuracy[c]) for c in self.conditions], dtype=np.float64)
        return replace(self, accuracy=values, accuracy_label=label)


def _hooks(build: ConditionBuilder, batch: Batch) -> Any:
    """The condition's hooks on `batch`; no hooks (``None``) change nothing."""
    if build is None:
        length = int(batch.input_ids.shape[1])
        return Intervention([], torch.full((len(batch),), length))
    return build(batch)


def knockout_effect(
    model: HookedVLM,
    batches: Batch | Iterable[Batch],
    conditions: Mapping[str, ConditionBuilder] | None = None,
    *,
    targets: Sequence[int] | Int[Tensor, " n"] | None = None,
    progress: bool = False,
) -> KnockoutResult:
    """Run every condition on every prompt and compare its next token with the baseline's.

    Args:
        model: the `HookedVLM`.
        batches: one `Batch` or several.
        conditions: name -> ``batch -> fwd_hooks`` (default `DEFAULT_CONDITIONS`); a
            ``"baseline"`` entry is ignored (the baseline always runs without hooks).
        targets: one token id per prompt (in batch order) to score top-1 accuracy against.
        progress: show a progress bar over batches.

    Returns:
        A `KnockoutResult`.

    Raises:
        VLMInputError: without batches, or when `targets` does not have one id per prompt or
            holds an id outside the vocabulary.

    Example:
        >>> result = knockout_effect(model, batches, targets=class_ids)  # doctest: +SKIP
        >>> result.to_frame()  # doctest: +SKIP
    """
    named = {k: v for k, v in (conditions or DEFAULT_CONDITIONS).items() if k != BASELINE}
    names = (BASELINE, *named)
    batch_list = [batches] if isinstance(batches, Batch) else list(batches)
    if not batch_list:
        raise VLMInputError("knockout_effect needs at least one batch")
    if targets is not None:
        check_token_ids(targets, vocabulary_size(model), "targets")
    provenance = Provenance("knockout_effect", model, conditions=named, targets=targets)
    for batch in batch_list:
        provenance.add(batch)

    def step(batch: Batch) -> tuple[list[Tensor], list[Tensor]]:
        # keyed by index: a condition may be called anything, "clean" included
        built = {str(i): _hooks(build, batch) for i, build in enumerate(named.values())}
        runs = run_sweep(model, batch, built)
        outs = [runs.logits[CLEAN], *(runs.logits[key] for key in built)]
        return (
            [logits.argmax(dim=-1).cpu() for logits in outs],
            [softmax_intersection(logits, outs[0]).cpu() for logits in outs],
        )

    outputs = map_shared(step, batch_list, desc="knockout", progress=progress)
    ids = torch.stack([torch.cat([o[0][i] for o in outputs]) for i in range(len(names))])
    sim = torch.stack([torch.cat([o[1][i] for o in outputs]) for i in range(len(names))]).double()
    n = ids.shape[1]
    accuracy = None
    label = ""
    if targets is not None:
        target = torch.as_tensor(targets).reshape(-1).cpu()
        if target.numel() != n:
            raise VLMInputError(
                f"targets has {target.numel()} token ids for {n} prompts; give one per prompt, "
                "in batch order"
            )
        accuracy = (ids == target[None]).double().mean(dim=1).numpy()
        label = "top-1 = target token"
    return KnockoutResult(
        conditions=names,
        agreement=(ids == ids[:1]).double().mean(dim=1).numpy(),
        similarity=sim.mean(dim=1).numpy(),
        accuracy=accuracy,
        accuracy_label=label,
        top1=ids.numpy(),
        n_prompts=n,
        meta=provenance.meta(),
    )

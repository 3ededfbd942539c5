"""Which runs of a batch go into which call when they are stacked along the batch.

`generate_runs` and `last_residuals` (`vlm_lens.evaluate.generation`) put several runs into one
call (`vlm_lens.engine.row_stack`): the runs that share the clean prefix in calls from one
tiled copy of it, the other stackable runs (``random``'s draws, which change image positions)
in calls on the whole tiled prompt, at most `width` runs a call, and every run that cannot be
stacked (a hook list that is not an `Intervention`, or one on a point without a batch axis) in
a call of its own. `trim_finished` cuts a run's rows of a stacked generation back to the length
its own generation would have had.

Example:
    >>> plan_calls(["baseline", "gate", "r#0", "r#1", "mine"], {"baseline", "gate"},
    ...            {"mine"}, width=8)
    [Call(runs=('baseline', 'gate'), shared=True), Call(runs=('r#0', 'r#1'), shared=False), \
Call(runs=('mine',), shared=False)]
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = ["Call", "eos_ids", "plan_calls", "trim_finished"]


@dataclass(frozen=True)
class Call:
    """One call of a stacked evaluation.

    Attributes:
        runs: the run names, in row order (run ``i`` owns rows ``i * batch ..``).
        shared: whether the call starts from the clean prefix (else from the whole prompt).
    """

    runs: tuple[str, ...]
    shared: bool


def plan_calls(
    runs: Sequence[str],
    sharing: Collection[str],
    alone: Collection[str],
    *,
    width: int,
    full_width: int | None = None,
) -> list[Call]:
    """The calls for `runs`: those in `sharing` (and not in `alone`) stacked from the clean
    prefix, at most `width` a call, the rest of those not in `alone` stacked on the whole
    prompt, at most `full_width` (default `width`) a call, in the order given; each run in
    `alone` in a call of its own.

    Raises:
        ValueError: for a width below 1.
    """
    full_width = width if full_width is None else full_width
    if width < 1 or full_width < 1:
        raise ValueError(f"widths must be at least 1, got {width} and {full_width}")
    shared = [r for r in runs if r in sharing and r not in alone]
    full = [r for r in runs if r not in sharing and r not in alone]
    calls = [
        Call(tuple(group[i : i + w]), is_shared)
        for group, is_shared, w in ((shared, True, width), (full, False, full_width))
        for i in range(0, len(group), w)
    ]
    return calls + [Call((r,), r in sharing) for r in runs if r in alone]


def eos_ids(model: Any) -> set[int]:
    """The end-of-sequence ids greedy generation stops at (the model's generation config)."""
    config = getattr(model.hf_model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def trim_finished(new: Int[Tensor, "batch new"], eos: Collection[int]) -> Int[Tensor, "batch kept"]:
    """`new` tokens of one run cut after the step at which its last row produced its first
    end-of-sequence token: where Hugging Face ``generate`` on that run alone stops (in a
    stacked call the rows go on, as padding, until every run has finished). Unchanged when a
    row never ends.

    Example:
        >>> trim_finished(torch.tensor([[5, 1, 2, 2], [6, 7, 1, 2]]), {1})
        tensor([[5, 1, 2],
                [6, 7, 1]])
    """
    if not eos or new.shape[1] == 0:
        return new
    ends = torch.isin(new, torch.tensor(sorted(eos), dtype=new.dtype, device=new.device))
    if not bool(ends.any(dim=1).all()):
        return new
    first = ends.int().argmax(dim=1)
    return new[:, : int(first.max()) + 1]

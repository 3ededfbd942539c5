"""Named conditions of the paper's Table 1: what runs under each column.

A `Condition` builds the ``fwd_hooks`` of one run on a batch: ``baseline`` (none), ``gate`` (no
position reads the gate, every layer: `vlm_lens.interventions.gate_knockout`),
``image->text`` (the text after the image reads no image-side token:
`image_to_text_knockout`) and ``random`` (no position reads ``k = 10`` random image tokens:
`random_image_knockout`, averaged over the task's seeded draws: 5 for VQA and 3 for captions,
as the paper, `Task.random_draws`).
``NAME@lastW`` restricts a knockout to the last ``W`` layers (the progressive χ^out curves;
`progressive_conditions`), and any ``name -> (batch -> fwd_hooks)`` is a user condition. Every
knockout blocks its edges in all heads the paper's way by default, ``mode="zero"``: the
post-softmax weights set to 0 with no renormalisation (its ``ablate_attn_mat_hook``);
``mode="mask"`` is the pre-softmax mask of Geva et al. (the others' weights renormalise, and
SDPA layers stay fused).

Random draws are seeded per item: draw ``d`` of item ``id`` uses the seed
`item_seed` ``(seed, d, id)``, so a draw does not depend on the batch an item lands in, on the
order of the items, or on a resumed run.

Example:
    >>> [c.name for c in parse_conditions("baseline,gate,image->text,random,gate@last2")]
    ['baseline', 'gate', 'image->text', 'random', 'gate@last2']
    >>> from vlm_lens.evaluate.tasks import TASKS
    >>> parse_conditions("random")[0].draws_for(TASKS["vqav2"])
    5
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from vlm_lens.batch import Batch
from vlm_lens.engine.intervention import Intervention
from vlm_lens.errors import VLMInputError
from vlm_lens.evaluate.tasks import Task
from vlm_lens.interventions import (
    gate_knockout,
    image_to_text_knockout,
    last_layers,
    random_image_knockout,
)
from vlm_lens.interventions.knockout import KnockoutMode
from vlm_lens.types import HookList

__all__ = [
    "DEFAULT_CONDITIONS",
    "KNOCKOUT_MODE",
    "RANDOM_K",
    "Condition",
    "ConditionContext",
    "as_conditions",
    "item_seed",
    "parse_conditions",
    "progressive_conditions",
]

RANDOM_K = 10
"""Image tokens knocked out by the ``random`` condition (the paper's k)."""

DEFAULT_CONDITIONS = ("baseline", "gate", "image->text", "random")
"""The four columns of Table 1."""

KNOCKOUT_MODE: KnockoutMode = "zero"
"""How the built-in knockouts block an edge by default: the paper's post-softmax zero."""

_WINDOW = re.compile(r"^(?P<base>[a-z>\-]+)@last(?P<w>\d+)$")


@dataclass(frozen=True)
class ConditionContext:
    """What a condition's builder gets besides the batch.

    Attributes:
        n_layers: decoder layers of the model.
        draw: index of the draw (0 for conditions with one draw).
        seeds: one seed per sequence of the batch (`item_seed` of the run seed, the draw and
            the item's id).
    """

    n_layers: int
    draw: int = 0
    seeds: tuple[int, ...] = ()


Builder = Callable[[Batch, ConditionContext], HookList]


@dataclass(frozen=True)
class Condition:
    """One column of the table: a name and how to build its hooks on a batch.

    Attributes:
        name: the column name (``"gate"``, ``"random"``, ``"gate@last8"``...).
        build: ``(batch, context) -> fwd_hooks``; an `Intervention` (which knows its
            earliest affected position) lets the runner reuse the clean prefix, any other
            hook list runs on the whole prompt.
        draws: number of seeded draws, averaged in the table, or ``"task"`` for the task's
            `Task.random_draws` (5 VQA, 3 captions, 1 χ^out).
        description: what it does, for the report.

    Example:
        >>> c = Condition.from_hooks("mine", lambda batch: [])
        >>> c.name, c.draws_for(TASKS["coco-captions"])  # doctest: +SKIP
        ('mine', 1)
    """

    name: str
    build: Builder
    draws: int | Literal["task"] = 1
    description: str = field(default="", compare=False)

    def draws_for(self, task: Task) -> int:
        """Number of draws on `task`."""
        return task.random_draws if self.draws == "task" else int(self.draws)

    def run_names(self, task: Task) -> list[str]:
        """Names of its runs: the name itself, or ``name#d`` per draw when it has several."""
        n = self.draws_for(task)
        return [self.name] if n == 1 else [f"{self.name}#{d}" for d in range(n)]

    @classmethod
    def from_hooks(cls, name: str, fn: Callable[[Batch], HookList]) -> Condition:
        """A user condition: ``batch -> fwd_hooks``."""
        return cls(name, lambda batch, _context: fn(batch), 1, "user condition")


def item_seed(seed: int, draw: int, item_id: str) -> int:
    """The seed of draw `draw` of item `item_id` (CRC-32 of the three; stable everywhere).

    Example:
        >>> item_seed(0, 1, "q7") == item_seed(0, 1, "q7") != item_seed(0, 2, "q7")
        True
    """
    return zlib.crc32(f"{seed}:{draw}:{item_id}".encode())


def _baseline(batch: Batch, _context: ConditionContext) -> HookList:
    length = int(batch.input_ids.shape[1])
    return Intervention([], torch.full((len(batch),), length, dtype=torch.long))


def _layers(window: int | None, context: ConditionContext) -> range | None:
    return None if window is None else last_layers(context.n_layers, window)


def _gate(window: int | None, mode: KnockoutMode) -> Builder:
    return lambda batch, context: gate_knockout(batch, layers=_layers(window, context), mode=mode)


def _image_to_text(window: int | None, mode: KnockoutMode) -> Builder:
    return lambda batch, context: image_to_text_knockout(
        batch, layers=_layers(window, context), mode=mode
    )


def _random(window: int | None, mode: KnockoutMode) -> Builder:
    def build(batch: Batch, context: ConditionContext) -> HookList:
        if len(context.seeds) != len(batch):
            raise VLMInputError(
                f"the random condition needs one seed per sequence ({len(batch)}), got "
                f"{len(context.seeds)}"
            )
        return random_image_knockout(
            batch, k=RANDOM_K, seed=list(context.seeds), layers=_layers(window, context), mode=mode
        )

    return build


_KNOCKOUTS: Mapping[str, tuple[Callable[[int | None, KnockoutMode], Builder], str]] = {
    "gate": (_gate, "no position reads the gate"),
    "image->text": (_image_to_text, "the text after the image reads no image-side token"),
    "random": (_random, f"no position reads {RANDOM_K} random image tokens"),
}


def named_condition(name: str, mode: KnockoutMode = KNOCKOUT_MODE) -> Condition:
    """The condition of a built-in name (``baseline``, ``gate``, ``image->text``, ``random``,
    or ``NAME@lastW`` for a knockout in the last ``W`` layers), its knockout blocking edges
    by `mode` (``"zero"``, the paper's post-softmax zero, or ``"mask"``, pre-softmax).

    Raises:
        VLMInputError: for an unknown name, listing the known ones.

    Example:
        >>> named_condition("gate@last8").description
        'no position reads the gate, last 8 layers (zero)'
    """
    if name == "baseline":
        return Condition("baseline", _baseline, 1, "no intervention")
    base, window = name, None
    match = _WINDOW.match(name)
    if match:
        base, window = match["base"], int(match["w"])
    if base not in _KNOCKOUTS:
        known = ", ".join(["baseline", *_KNOCKOUTS])
        raise VLMInputError(
            f"unknown condition {name!r}; known: {known}, or NAME@lastW for a knockout in the "
            "last W layers (gate@last8)"
        )
    make, what = _KNOCKOUTS[base]
    if mode not in ("zero", "mask"):
        raise VLMInputError(f"knockout mode must be 'zero' or 'mask', got {mode!r}")
    description = what + ("" if window is None else f", last {window} layers") + f" ({mode})"
    draws: int | Literal["task"] = "task" if base == "random" else 1
    return Condition(name, make(window, mode), draws, description)


def parse_conditions(
    text: str | Iterable[str], mode: KnockoutMode = KNOCKOUT_MODE
) -> list[Condition]:
    """Conditions from a comma-separated list (or a list) of built-in names (knockouts by
    `mode`, `named_condition`).

    Raises:
        VLMInputError: for an unknown, empty or repeated name.
    """
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    if not names or any(not n for n in names):
        raise VLMInputError(f"empty condition name in {text!r}; e.g. baseline,gate,random")
    if len(set(names)) != len(names):
        raise VLMInputError(f"a condition is given twice in {names}")
    return [named_condition(n, mode) for n in names]


def progressive_conditions(
    n_layers: int,
    windows: Sequence[int] | None = None,
    *,
    knockout: str = "gate",
    mode: KnockoutMode = KNOCKOUT_MODE,
) -> list[Condition]:
    """The progressive knockout curve: `knockout` in the last ``w`` layers for each window
    (default ``0 .. n_layers``; ``w = 0`` is the baseline).

    Example:
        >>> [c.name for c in progressive_conditions(2)]
        ['baseline', 'gate@last1', 'gate@last2']
    """
    out = []
    for w in range(n_layers + 1) if windows is None else windows:
        if not 0 <= w <= n_layers:
            raise VLMInputError(f"window {w} is outside 0..{n_layers}")
        out.append(named_condition("baseline" if w == 0 else f"{knockout}@last{w}", mode))
    return out


def as_conditions(
    conditions: str | Iterable[str | Condition] | Mapping[str, Callable[[Batch], HookList]],
    mode: KnockoutMode = KNOCKOUT_MODE,
) -> list[Condition]:
    """Normalise what `evaluate` accepts: names (a comma list or a list; knockouts by `mode`),
    `Condition` objects, or a mapping ``name -> (batch -> fwd_hooks)`` of user conditions.

    Raises:
        VLMInputError: for unknown or repeated names.
    """
    if isinstance(conditions, str):
        return parse_conditions(conditions, mode)
    if isinstance(conditions, Mapping):
        out = [Condition.from_hooks(str(k), v) for k, v in conditions.items()]
    else:
        out = [c if isinstance(c, Condition) else named_condition(c, mode) for c in conditions]
    names = [c.name for c in out]
    if not out:
        raise VLMInputError("no conditions given; e.g. baseline,gate,image->text,random")
    if len(set(names)) != len(names):
        raise VLMInputError(f"a condition is given twice in {names}")
    for name in names:
        if "#" in name:
            raise VLMInputError(f"condition name {name!r} may not contain '#' (draws use it)")
    return out

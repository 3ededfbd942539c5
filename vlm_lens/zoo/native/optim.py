"""Learning-rate schedule and small helpers both phases share.

Example:
    >>> schedule(0, 100, 10), round(schedule(100, 100, 10), 2)
    (0.1, 0.05)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch


def schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimiser: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to `lr` times its ``lr_scale`` (default 1)."""
    for group in optimiser.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def tail(values: Sequence[float]) -> float:
    """Mean of the last 10% of `values` (at least one); nan for none."""
    if not values:
        return float("nan")
    last = values[-max(1, len(values) // 10) :]
    return float(sum(last) / len(last))


class Budget:
    """A phase's length: `steps` optimiser steps, or (`seconds` > 0) as many as fit in that many
    wall seconds (at most `steps`), with the schedule's progress the elapsed fraction of time.

    Args:
        steps: the number of steps (the most, with `seconds`).
        seconds: the wall-clock budget (0: none; the schedule follows the steps).
        warmup: warm-up steps of `schedule`.
        elapsed: seconds already spent (a resumed phase).

    Example:
        >>> budget = Budget(100, 0.0, 10)
        >>> budget.lr_factor(100) == schedule(100, 100, 10), budget.fraction(50), budget.over(99)
        (True, 0.5, False)
        >>> Budget(100, 3600.0, 10).over(5)
        False
    """

    def __init__(self, steps: int, seconds: float, warmup: int, elapsed: float = 0.0):
        self.steps = steps
        self.seconds = seconds
        self.warmup = warmup
        self.start = time.perf_counter() - elapsed

    def elapsed(self) -> float:
        """Wall seconds spent in the phase (over every resumed part)."""
        return time.perf_counter() - self.start

    def fraction(self, step: int) -> float:
        """Progress through the phase: of time with `seconds`, else of steps."""
        if self.seconds > 0:
            return min(1.0, self.elapsed() / self.seconds)
        return step / self.steps

    def before(self, step: int, fraction: float) -> bool:
        """Whether (0-based) `step` comes before `fraction` of the phase (by steps exactly as
        ``step < steps * fraction``, or by time)."""
        if self.seconds > 0:
            return self.fraction(step) < fraction
        return step < self.steps * fraction

    def lr_factor(self, step: int) -> float:
        """The learning-rate factor of (0-based) `step`: `schedule` by steps, or by time."""
        if self.seconds <= 0:
            return schedule(step, self.steps, self.warmup)
        if step < self.warmup:
            return (step + 1) / self.warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * self.fraction(step)))

    def over(self, done: int) -> bool:
        """Whether the phase ends after `done` finished steps."""
        return done >= self.steps or (self.seconds > 0 and self.elapsed() >= self.seconds)

"""Learning-rate schedule and small helpers both phases share.

Example:
    >>> schedule(0, 100, 10), round(schedule(100, 100, 10), 2)
    (0.1, 0.05)
"""

from __future__ import annotations

import math
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

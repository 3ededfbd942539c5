"""`Intervention`: a plain TransformerLens ``fwd_hooks`` list that knows what it can change."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from jaxtyping import Int
from torch import Tensor

from vlm_lens.types import Hook


class Intervention(list):
    """A list of ``(hook_name, hook_fn)`` pairs, usable wherever TransformerLens takes
    ``fwd_hooks``, plus the earliest position each sequence's activations can change at.

    Every position before ``earliest_position[b]`` of sequence ``b`` is computed exactly as in
    the clean run, so a cache of that prefix can be reused. Adding two interventions gives one
    whose hooks are both lists and whose earliest position is the smaller.

    Attributes:
        earliest_position: ``[batch]`` first position the intervention can affect (the
            sequence length when it affects no prompt position, e.g. only generated tokens).

    Example:
        >>> import torch
        >>> a = Intervention([("blocks.0.hook_resid_pre", print)], torch.tensor([5]))
        >>> b = Intervention([("blocks.1.hook_resid_pre", print)], torch.tensor([3]))
        >>> both = a + b
        >>> len(both), both.earliest
        (2, 3)
    """

    def __init__(self, hooks: Iterable[Hook], earliest_position: Int[Tensor, " batch"]):
        super().__init__(hooks)
        self.earliest_position = earliest_position.to("cpu", torch.long)

    @property
    def earliest(self) -> int:
        """The smallest `earliest_position` over the batch."""
        return int(self.earliest_position.min())

    def __add__(self, other: Iterable[Hook]) -> Intervention:  # type: ignore[override]
        hooks = [*self, *other]
        if isinstance(other, Intervention):
            if other.earliest_position.shape != self.earliest_position.shape:
                raise ValueError(
                    "cannot combine interventions built for batches of different sizes "
                    f"({len(self.earliest_position)} and {len(other.earliest_position)})"
                )
            earliest = torch.minimum(self.earliest_position, other.earliest_position)
        else:
            earliest = torch.zeros_like(self.earliest_position)  # unknown hooks: assume all
        return Intervention(hooks, earliest)

    def __repr__(self) -> str:
        names = [name if isinstance(name, str) else "<filter>" for name, _ in self]
        return f"Intervention({names}, earliest_position={self.earliest_position.tolist()})"


def first_true(mask: Tensor, default: int) -> Int[Tensor, " batch"]:
    """Index of the first true entry of each row of a ``[batch, pos]`` mask (`default` if none)."""
    pos = torch.arange(mask.shape[1])
    filled = torch.where(mask, pos, torch.full_like(pos, default))
    return torch.cat([filled, torch.full((mask.shape[0], 1), default)], dim=1).min(dim=1).values

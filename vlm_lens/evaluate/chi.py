"""χ_out: neighbourhood overlap of last-token representations with class labels."""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor

__all__ = ["chi_out"]


def chi_out(representations: Float[Tensor, "n d"], labels: Sequence[str], k: int = 30) -> float:
    """χ_out of `representations` with `labels`."""
    raise NotImplementedError

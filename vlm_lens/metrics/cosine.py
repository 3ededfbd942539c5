"""Quantiles of |cos| between two sets of vectors (the paper's modality-gap cosine metric).

The paper (section 2(a)) reports, per layer, the median of ``|cos(t_i, v_j)|`` over text vectors
``t`` and image vectors ``v``, with the interquartile band. This module computes exact
quantiles over the **full** ``n × m`` cross block. The paper's code kept only the strictly
lower-triangular part of that block, a quirk this implementation does not copy.

Example:
    >>> import torch
    >>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> b = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    >>> abs_cosine_quantiles(a, b, quantiles=(0.0, 0.5, 1.0)).round(4).tolist()
    [0.0, 0.7071, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["abs_cosine_matrix", "abs_cosine_quantiles"]

_CHUNK_ELEMENTS = 2**24


def _as_float_tensor(x: Float[Tensor, "n d"] | np.ndarray, name: str) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be [n, d] (one vector per row); got {tuple(t.shape)}.")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has no rows; pass at least one vector.")
    if t.dtype != torch.float64:
        t = t.to(torch.float32)
    return t


def _unit_rows(x: Tensor) -> Tensor:
    """Rows scaled to unit norm; an all-zero row stays zero (its cosine with anything is 0)."""
    return torch.nn.functional.normalize(x, dim=1)


def abs_cosine_matrix(
    a: Float[Tensor, "n d"] | np.ndarray, b: Float[Tensor, "m d"] | np.ndarray
) -> Float[Tensor, "n m"]:
    """The full ``|cos|`` cross block, ``[n, m]`` (float64 if either input is float64).

    Example:
        >>> import torch
        >>> abs_cosine_matrix(torch.eye(2), -torch.eye(2)).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    ua, ub = _pair(a, b)
    return (ua @ ub.T).abs_()


def _pair(
    a: Float[Tensor, "n d"] | np.ndarray, b: Float[Tensor, "m d"] | np.ndarray
) -> tuple[Tensor, Tensor]:
    ta, tb = _as_float_tensor(a, "a"), _as_float_tensor(b, "b")
    if ta.shape[1] != tb.shape[1]:
        raise ValueError(
            f"a and b must have the same width d; got a {tuple(ta.shape)} and b {tuple(tb.shape)}."
        )
    dtype = torch.float64 if torch.float64 in (ta.dtype, tb.dtype) else torch.float32
    tb = tb.to(device=ta.device, dtype=dtype)
    ta = ta.to(dtype)
    if not (bool(torch.isfinite(ta).all()) and bool(torch.isfinite(tb).all())):
        raise ValueError("a or b holds NaN or infinite values; clean the vectors first.")
    return _unit_rows(ta), _unit_rows(tb)


def abs_cosine_quantiles(
    a: Float[Tensor, "n d"] | np.ndarray,
    b: Float[Tensor, "m d"] | np.ndarray,
    quantiles: Sequence[float] = (0.25, 0.5, 0.75),
    *,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Exact quantiles of ``|cos(a_i, b_j)|`` over all ``n × m`` pairs.

    The block is computed in row chunks on the device of `a` (``chunk_size × m`` values at a
    time) and gathered into one flat CPU buffer, on which `numpy.quantile` selects the order
    statistics exactly (linear interpolation, numpy's default; this has none of
    `torch.quantile`'s 16M-element limit). Memory: ``4·n·m`` bytes (``8·n·m`` for float64
    inputs), i.e. 400 MB for ``n = m = 10,000``. Float64 inputs are computed in float64, every
    other dtype in float32. A zero vector has cosine 0 with everything.

    Note: the paper's code used only the strictly lower-triangular part of the cross block (a
    quirk); here every pair counts.

    Args:
        a: first set, ``[n, d]`` (e.g. text-token residuals of one layer).
        b: second set, ``[m, d]`` (e.g. image-token residuals of the same layer).
        quantiles: probabilities in ``[0, 1]``.
        chunk_size: rows of `a` per chunk; default keeps a chunk under 2**24 values.

    Returns:
        float64 array with one value per entry of `quantiles`.

    Raises:
        ValueError: for mismatched widths, empty inputs, non-finite values or quantiles
            outside ``[0, 1]``.

    Example:
        >>> import numpy as np
        >>> a = np.array([[1.0, 0.0], [1.0, 1.0]])
        >>> b = np.array([[0.0, 2.0], [3.0, 0.0]])
        >>> abs_cosine_quantiles(a, b, quantiles=(0.5,)).round(4).tolist()
        [0.7071]
    """
    qs = np.asarray(quantiles, dtype=np.float64).reshape(-1)
    if qs.size == 0 or not bool(np.all((qs >= 0) & (qs <= 1))):
        raise ValueError(f"quantiles must be a non-empty sequence in [0, 1]; got {quantiles!r}.")
    ua, ub = _pair(a, b)
    n, m = ua.shape[0], ub.shape[0]
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // m)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size}.")
    np_dtype = np.float64 if ua.dtype == torch.float64 else np.float32
    flat = np.empty(n * m, dtype=np_dtype)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        block = (ua[start:stop] @ ub.T).abs_()
        flat[start * m : stop * m] = block.cpu().numpy().reshape(-1)
    # The buffer is ours: let numpy partition it in place instead of copying.
    return np.quantile(flat, qs, overwrite_input=True).astype(np.float64)

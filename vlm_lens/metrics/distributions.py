"""Comparing next-token distributions: histogram intersection, logit differences, class flips.

These are the two readouts of the paper's gate-patching experiment (section 2(e)):

- **similarity** (v1): the histogram intersection ``Σ_v min(p_v, q_v)`` of two next-token
  distributions, which equals ``1 - TV(p, q)`` (one minus the total-variation distance);
- **accuracy** (v2/v3): with ``d = logit[target class] - logit[source class]``, the fraction of
  examples whose prediction flips toward the source class (the class whose activation was
  patched in).

Every function takes torch tensors or numpy arrays and returns torch tensors.

Example:
    >>> import torch
    >>> p = torch.tensor([0.5, 0.5, 0.0])
    >>> q = torch.tensor([0.25, 0.25, 0.5])
    >>> histogram_intersection(p, q).item()
    0.5
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = [
    "flip_rate",
    "flip_toward_source",
    "histogram_intersection",
    "logit_difference",
    "softmax_intersection",
]


def _as_tensor(x: Tensor | np.ndarray | float) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(x)


def histogram_intersection(
    p: Float[Tensor, "*batch vocab"] | np.ndarray, q: Float[Tensor, "*batch vocab"] | np.ndarray
) -> Float[Tensor, "*batch"]:
    """Histogram intersection ``Σ_v min(p_v, q_v)`` over the last dimension.

    For two probability distributions this is ``1 - TV(p, q)``, where
    ``TV(p, q) = ½ Σ_v |p_v - q_v|`` is the total-variation distance: 1 for identical
    distributions, 0 for distributions with disjoint support. The inputs are used as given (not
    renormalised); pass logits through `softmax_intersection` instead.

    Args:
        p: probabilities, ``[..., vocab]``.
        q: probabilities, ``[..., vocab]`` (broadcastable against `p`).

    Returns:
        The intersection, ``[...]``.

    Raises:
        ValueError: if the last dimensions of `p` and `q` differ.

    Example:
        >>> import torch
        >>> p = torch.tensor([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0]])
        >>> q = torch.tensor([[0.1, 0.2, 0.7], [0.0, 0.0, 1.0]])
        >>> [round(v, 6) for v in histogram_intersection(p, q).tolist()]
        [0.4, 0.0]
    """
    p, q = _as_tensor(p), _as_tensor(q)
    if p.shape[-1:] != q.shape[-1:]:
        raise ValueError(
            f"p and q must share their last (vocabulary) dimension; got shapes {tuple(p.shape)} "
            f"and {tuple(q.shape)}. Pass distributions over the same vocabulary."
        )
    return torch.minimum(p, q).sum(dim=-1)


def softmax_intersection(
    logits_p: Float[Tensor, "*batch vocab"] | np.ndarray,
    logits_q: Float[Tensor, "*batch vocab"] | np.ndarray,
) -> Float[Tensor, "*batch"]:
    """Histogram intersection of ``softmax(logits_p)`` and ``softmax(logits_q)``.

    The softmax is taken in float64 (half-precision logits lose the small probabilities that add
    up over a large vocabulary), and the result is float64.

    Args:
        logits_p: logits, ``[..., vocab]``.
        logits_q: logits, ``[..., vocab]`` (broadcastable against `logits_p`).

    Returns:
        ``Σ_v min(p_v, q_v)``, ``[...]``, float64.

    Example:
        >>> import torch
        >>> same = torch.tensor([2.0, 0.0, -1.0])
        >>> round(softmax_intersection(same, same).item(), 12)
        1.0
        >>> uniform, peaked = torch.tensor([0.0, 0.0]), torch.tensor([50.0, 0.0])
        >>> round(softmax_intersection(uniform, peaked).item(), 6)
        0.5
    """
    p = torch.softmax(_as_tensor(logits_p).to(torch.float64), dim=-1)
    q = torch.softmax(_as_tensor(logits_q).to(torch.float64), dim=-1)
    return histogram_intersection(p, q)


def _token_column(logits: Tensor, token: int | Tensor | np.ndarray, name: str) -> Tensor:
    vocab = logits.shape[-1]
    if isinstance(token, (int, np.integer)):
        if not -vocab <= int(token) < vocab:
            raise ValueError(f"{name}={int(token)} is out of range for a vocabulary of {vocab}.")
        return logits[..., int(token)]
    ids = _as_tensor(token).to(device=logits.device)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids; got dtype {ids.dtype}.")
    if ids.ndim == 0:
        return _token_column(logits, int(ids), name)
    if tuple(ids.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"{name} must be an int or hold one token id per row of logits, i.e. have shape "
            f"{tuple(logits.shape[:-1])}; got {tuple(ids.shape)}."
        )
    if ((ids < 0) | (ids >= vocab)).any():
        raise ValueError(f"{name} holds ids outside [0, {vocab}).")
    return logits.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1)


def logit_difference(
    logits: Float[Tensor, "*batch vocab"] | np.ndarray,
    token_a: int | Int[Tensor, "*batch"] | np.ndarray,
    token_b: int | Int[Tensor, "*batch"] | np.ndarray,
) -> Float[Tensor, "*batch"]:
    """``logits[..., token_a] - logits[..., token_b]``.

    Args:
        logits: ``[..., vocab]``.
        token_a: one token id for every row, or one id per row (shape ``logits.shape[:-1]``).
        token_b: same as `token_a`.

    Returns:
        The difference, ``[...]``.

    Raises:
        ValueError: for ids out of range or per-row ids of the wrong shape.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 5.0]])
        >>> logit_difference(logits, 1, 0).tolist()
        [2.0, -2.0]
        >>> logit_difference(logits, torch.tensor([1, 2]), torch.tensor([0, 0])).tolist()
        [2.0, 3.0]
    """
    logits = _as_tensor(logits)
    return _token_column(logits, token_a, "token_a") - _token_column(logits, token_b, "token_b")


def flip_toward_source(
    d_clean: Float[Tensor, "*batch"] | np.ndarray, d_patched: Float[Tensor, "*batch"] | np.ndarray
) -> Bool[Tensor, "*batch"]:
    """Whether patching flipped the prediction from the target class to the source class.

    Convention: ``d = logit[target class] - logit[source class]`` (see `logit_difference`),
    where the *target* is the class of the image that is run and the *source* is the class whose
    activation is patched in. A flip is ``(d_clean > 0) & (d_patched < 0)``: the clean run
    preferred the target class and the patched run prefers the source class. An example whose
    clean run already preferred the source (``d_clean <= 0``) can never count as a flip, and
    exact ties (``d == 0``) are never on the preferred side. The paper's v2/v3 "accuracy" counts
    any sign change; with this convention only the change toward the source counts.

    Args:
        d_clean: ``d`` of the unpatched run, ``[...]``.
        d_patched: ``d`` of the patched run, same shape.

    Returns:
        A boolean tensor, ``[...]``.

    Example:
        >>> import torch
        >>> flip_toward_source(torch.tensor([2.0, 2.0, -1.0, 1.0]),
        ...                    torch.tensor([-0.5, 0.5, -3.0, 0.0])).tolist()
        [True, False, False, False]
    """
    d_clean, d_patched = _as_tensor(d_clean), _as_tensor(d_patched)
    if d_clean.shape != d_patched.shape:
        raise ValueError(
            f"d_clean and d_patched must have the same shape; got {tuple(d_clean.shape)} and "
            f"{tuple(d_patched.shape)}. Pass one value per example to both."
        )
    return (d_clean > 0) & (d_patched < 0)


def flip_rate(
    d_clean: Float[Tensor, " n"] | np.ndarray, d_patched: Float[Tensor, " n"] | np.ndarray
) -> float:
    """Fraction of examples that `flip_toward_source` (the denominator is every example).

    Example:
        >>> import torch
        >>> flip_rate(torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([-1.0, -2.0, 3.0, 1.0]))
        0.5
    """
    flips = flip_toward_source(d_clean, d_patched)
    if flips.numel() == 0:
        raise ValueError("flip_rate needs at least one example; got empty inputs.")
    return float(flips.double().mean())

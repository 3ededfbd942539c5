"""Neighbourhood overlap χ: how often a sample's k nearest neighbours share its label.

The paper (section 2(f), after Doimo et al. 2020) probes the semantics of a token position with
the per-sample overlap

    o_i = (1/k) Σ_{j ∈ kNN(i)} [label_i == label_j]

over Euclidean nearest neighbours, self excluded, with ``k = 30``. Two averages of ``o_i``:

- ``average="class"`` (default): the mean over classes of each class's mean,
  ``χ = (1/C) Σ_c (1/n_c) Σ_{i ∈ c} o_i``. This is what the paper's code computes: dadapy's
  ``Data.return_label_overlap`` with its default ``weighted=True`` weighs every sample by
  ``1 / n_c`` (``np.average(o, weights=1/n_c)``), so each class counts once.
- ``average="sample"``: the plain mean ``χ = (1/n) Σ_i o_i``, the formula printed in the paper.

They are equal on balanced classes (the paper's 100 × 100 images) and differ on unbalanced ones,
where the sample mean leans toward the large classes. Random neighbours give the chance level
(`overlap_chance_level`, same ``average``): ``Σ_c n_c (n_c - 1) / (n (n - 1))`` for the sample
mean, ``(n - C) / (C (n - 1))`` for the class mean (both about ``1/C`` when balanced).

χ says little when a class has at most k samples: its members cannot have k same-label
neighbours, so their overlap is capped below 1 whatever the representations (``k >= n / 2``
always does this with two or more classes), and with a single class χ is 1 trivially.
`overlap_caveat` states the rule; `neighbourhood_overlap` warns with
`vlm_lens.errors.UninformativeMetricWarning` and still returns the value.

Distances are computed in row chunks with torch, so at most ``chunk_size × n`` distances exist at
once (the default keeps that under 2**20 values, 4 MiB in float32 for any n), on the
device of the input tensor.

Example:
    >>> import torch
    >>> x = torch.tensor([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    >>> labels = [0, 0, 0, 1, 1, 1]
    >>> neighbourhood_overlap(x, labels, k=2)
    1.0
    >>> overlap_chance_level(labels)
    0.4
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens.errors import UninformativeMetricWarning

__all__ = [
    "AVERAGES",
    "DEFAULT_CHUNK_ELEMENTS",
    "Average",
    "neighbourhood_overlap",
    "neighbourhood_overlap_per_sample",
    "overlap_caveat",
    "overlap_chance_level",
    "overlap_chance_level_per_sample",
]

DEFAULT_CHUNK_ELEMENTS = 2**20
"""Upper bound on the number of distances held at once when ``chunk_size`` is not given."""

LabelsLike = Sequence[object] | np.ndarray | Tensor
"""Class labels, one per sample: ints, strings, or anything `numpy.unique` can sort."""

Average = Literal["class", "sample"]
"""How χ averages the per-sample overlaps: ``"class"`` (mean of the class means, the paper's
dadapy call) or ``"sample"`` (plain mean over samples)."""

AVERAGES: tuple[str, ...] = ("class", "sample")
"""The accepted values of `Average`, default first."""


def _label_codes(labels: LabelsLike) -> np.ndarray:
    """Labels as integer codes ``0..C-1`` (any sortable label type)."""
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(
            f"labels must be one-dimensional (one label per sample); got shape {arr.shape}."
        )
    return np.unique(arr, return_inverse=True)[1].reshape(-1)


def _as_float_tensor(x: Float[Tensor, "n d"] | np.ndarray) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.dtype != torch.float64:
        t = t.to(torch.float32)
    return t


def _check(x: Tensor, codes: np.ndarray, k: int) -> None:
    if x.ndim != 2:
        raise ValueError(
            f"x must be [n, d] (one row per sample); got shape {tuple(x.shape)}. "
            "For [layers, n, d] use vlm_lens.analysis.neighbourhood_overlap."
        )
    n = x.shape[0]
    if codes.shape[0] != n:
        raise ValueError(
            f"x has {n} samples but labels has {codes.shape[0]}; pass one label per row of x."
        )
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}.")
    if k >= n:
        raise ValueError(
            f"k={k} neighbours needs more than k samples, but there are only n={n}; "
            f"use k <= {n - 1} or more samples."
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or infinite values; clean the representations first.")


def _knn_indices(x: Tensor, k: int, chunk_size: int | None) -> Tensor:
    """Indices ``[n, k]`` of each row's k nearest other rows (Euclidean, stable ties)."""
    n = x.shape[0]
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK_ELEMENTS // n)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size}.")
    sq = (x * x).sum(dim=1)
    out = torch.empty((n, k), dtype=torch.long, device=x.device)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        rows = torch.arange(start, stop, device=x.device)
        # |x_j|² - 2 x_i·x_j: the squared distance minus |x_i|², a per-row constant that does
        # not change the ranking within a row.
        dist = torch.addmm(sq[None, :], x[start:stop], x.T, alpha=-2.0)
        dist[rows - start, rows] = torch.inf  # self excluded by index, not by distance
        values, idx = torch.topk(dist, k + 1, dim=1, largest=False, sorted=True)
        out[start:stop] = idx[:, :k]
        # If the (k+1)-th value equals the k-th, topk's pick among the tied is arbitrary:
        # redo those rows with a stable sort so that the lowest indices win.
        tied = values[:, k] == values[:, k - 1]
        if bool(tied.any()):
            stable = torch.sort(dist[tied], dim=1, stable=True).indices[:, :k]
            out[start:stop][tied] = stable
    return out


def _same_label_counts(
    x: Float[Tensor, "n d"] | np.ndarray, labels: LabelsLike, k: int, chunk_size: int | None
) -> np.ndarray:
    """For each sample, how many of its k nearest neighbours share its label (int64, ``[n]``)."""
    xt = _as_float_tensor(x)
    codes = _label_codes(labels)
    _check(xt, codes, k)
    idx = _knn_indices(xt, k, chunk_size).cpu().numpy()
    return (codes[idx] == codes[:, None]).sum(axis=1)


def neighbourhood_overlap_per_sample(
    x: Float[Tensor, "n d"] | np.ndarray,
    labels: LabelsLike,
    k: int = 30,
    *,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Per-sample overlap: the fraction of each sample's k nearest neighbours with its label.

    Neighbours are by Euclidean distance, the sample itself excluded (by index, so an exact
    duplicate of a sample is still a neighbour). Ties at the k-th distance are broken toward the
    lower sample index, so the result does not depend on chunking or hardware. Float64 inputs
    are computed in float64; every other dtype in float32.

    Args:
        x: representations, ``[n, d]`` (torch, on any device, or numpy).
        labels: one label per sample (ints, strings, ...), ``[n]``.
        k: number of neighbours; ``1 <= k < n``.
        chunk_size: rows of the distance matrix computed at once; default
            ``2**20 // n`` (4 MiB of float32 distances for any n).

    Returns:
        ``[n]`` float64 array with values in ``{0, 1/k, ..., 1}``.

    Raises:
        ValueError: if ``k >= n``, ``k < 1``, `labels` does not have one entry per row of `x`,
            `x` is not 2-D or holds non-finite values.

    Example:
        >>> import numpy as np
        >>> x = np.array([[0.0], [1.0], [2.0], [3.0]])
        >>> neighbourhood_overlap_per_sample(x, ["a", "a", "b", "b"], k=1).tolist()
        [1.0, 1.0, 0.0, 1.0]

        The point at 2.0 is as far from 1.0 as from 3.0; the tie goes to the lower index (1.0,
        labelled "a").
    """
    return _same_label_counts(x, labels, k, chunk_size) / k


def _check_average(average: str) -> None:
    if average not in AVERAGES:
        raise ValueError(
            f"average must be one of {AVERAGES} (class: the paper's per-class mean; sample: "
            f"the plain mean); got {average!r}."
        )


def overlap_caveat(labels: LabelsLike, k: int) -> str | None:
    """Why χ with these labels and k would be uninformative, or None when it is not.

    The rule: χ is uninformative when there is a single class (every neighbour agrees: χ = 1)
    or when the smallest class has at most k samples (its members have at most ``n_c - 1``
    same-label neighbours, so their overlap cannot exceed ``(n_c - 1) / k``). With two or more
    classes, ``k >= n / 2`` always breaks the second condition.

    Args:
        labels: one label per sample, ``[n]``.
        k: neighbours per sample.

    Returns:
        A sentence naming the limit and the fix, or None.

    Example:
        >>> overlap_caveat(["a"] * 40 + ["b"] * 40, k=30) is None
        True
        >>> overlap_caveat(["a"] * 40 + ["b"] * 5, k=30)[:44]
        "the smallest class, 'b', has 5 samples, not "
    """
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    names, counts = np.unique(arr.reshape(-1), return_counts=True)
    if names.size < 2:
        return (
            f"all {int(counts.sum())} samples share one label, so every neighbour agrees and "
            "χ = 1 whatever the representations; give samples of at least two classes"
        )
    smallest = int(np.argmin(counts))
    size = int(counts[smallest])
    if size <= k:
        return (
            f"the smallest class, {names[smallest].item()!r}, has {size} samples, not more than "
            f"k = {k}: its members have at most {size - 1} same-label neighbours, so their "
            f"overlap cannot exceed {(size - 1) / k:.3f} whatever the representations; use "
            + (f"k < {size} or " if size > 1 else "")
            + "more than k samples in every class (the paper: k = 30, 100 per class)"
        )
    return None


def neighbourhood_overlap(
    x: Float[Tensor, "n d"] | np.ndarray,
    labels: LabelsLike,
    k: int = 30,
    *,
    average: Average = "class",
    chunk_size: int | None = None,
    warn: bool = True,
) -> float:
    """χ: the average of `neighbourhood_overlap_per_sample`, per class first by default.

    Args:
        x: representations, ``[n, d]``.
        labels: one label per sample, ``[n]``.
        k: number of neighbours (the paper uses 30); ``1 <= k < n``.
        average: ``"class"`` (default): the mean over classes of each class's mean overlap,
            as dadapy's ``return_label_overlap`` computes it for the paper (every class counts
            once); ``"sample"``: the plain mean over samples. Equal on balanced classes.
        chunk_size: rows of the distance matrix computed at once (see
            `neighbourhood_overlap_per_sample`).
        warn: warn with `vlm_lens.errors.UninformativeMetricWarning` when `overlap_caveat`
            finds χ uninformative for these labels and k.

    Returns:
        χ in ``[0, 1]``. Compare with `overlap_chance_level` (same `average`).

    Raises:
        ValueError: an unknown `average`; see also `neighbourhood_overlap_per_sample`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.randn(20, 4, generator=g), torch.randn(20, 4, generator=g) + 8])
        >>> neighbourhood_overlap(x, [0] * 20 + [1] * 20, k=5)
        1.0

        On unbalanced classes the two averages differ: here the single "b" has no "b"
        neighbour (overlap 0) while the three "a" have only "a" neighbours (overlap 1).

        >>> x = torch.tensor([[0.0], [0.1], [0.2], [1.0]])
        >>> neighbourhood_overlap(x, ["a", "a", "a", "b"], k=1, average="sample", warn=False)
        0.75
        >>> neighbourhood_overlap(x, ["a", "a", "a", "b"], k=1, average="class", warn=False)
        0.5
    """
    _check_average(average)
    counts = _same_label_counts(x, labels, k, chunk_size)
    if warn:
        reason = overlap_caveat(labels, k)
        if reason is not None:
            warnings.warn(f"χ is uninformative: {reason}", UninformativeMetricWarning, stacklevel=2)
    if average == "class":
        codes = _label_codes(labels)
        per_class = np.bincount(codes, weights=counts) / (np.bincount(codes) * k)
        return float(per_class.mean())
    # An integer count over n*k: exact, whatever the summation order.
    return float(counts.sum() / (counts.shape[0] * k))


def overlap_chance_level_per_sample(labels: LabelsLike) -> np.ndarray:
    """Expected overlap of each sample under random neighbours: ``(n_c(i) - 1) / (n - 1)``.

    Example:
        >>> overlap_chance_level_per_sample([0, 0, 1]).tolist()
        [0.5, 0.5, 0.0]
    """
    codes = _label_codes(labels)
    n = codes.shape[0]
    if n < 2:
        raise ValueError(f"the chance level needs at least 2 samples; got {n}.")
    counts = np.bincount(codes)
    return (counts[codes] - 1) / (n - 1)


def overlap_chance_level(labels: LabelsLike, *, average: Average = "class") -> float:
    """Expected χ when each sample's neighbours are drawn at random from the other samples.

    A sample of class c expects ``(n_c - 1) / (n - 1)``. Averaged over samples
    (``average="sample"``) that is ``Σ_c n_c (n_c - 1) / (n (n - 1))``, the probability that
    two distinct samples drawn at random share a label; averaged over classes
    (``average="class"``, the default, as `neighbourhood_overlap`) it is
    ``(n - C) / (C (n - 1))``. For C balanced classes both are ``(n/C - 1) / (n - 1)`` ≈ ``1/C``.

    Args:
        labels: one label per sample, ``[n]``, ``n >= 2``.
        average: ``"class"`` or ``"sample"``, as for `neighbourhood_overlap`.

    Returns:
        The chance level in ``[0, 1]``.

    Example:
        >>> round(overlap_chance_level([c for c in range(100) for _ in range(100)]), 6)
        0.009901
        >>> labels = [0, 0, 0, 1]
        >>> overlap_chance_level(labels, average="sample"), overlap_chance_level(labels)
        (0.5, 0.3333333333333333)
    """
    _check_average(average)
    codes = _label_codes(labels)
    n = codes.shape[0]
    if n < 2:
        raise ValueError(f"the chance level needs at least 2 samples; got {n}.")
    if average == "class":
        classes = int(codes.max()) + 1
        return (n - classes) / (classes * (n - 1))
    counts = np.bincount(codes).astype(np.float64)
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))

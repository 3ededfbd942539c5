"""χ_out: neighbourhood overlap of the last token's final-layer residual with the class labels.

The paper's ImageNet column (section 2(d)) is not top-1 accuracy: it is χ (section 2(f)) of the
last text token's final-layer representation, one row per image, with the ImageNet labels,
``k = 30``. It is computed here by `vlm_lens.metrics.neighbourhood.neighbourhood_overlap`
(Euclidean neighbours, self excluded, ties to the lower index).

Averaging: ``average="class"`` (default) first averages within each class, then over classes,
which is what the paper's code computes (dadapy's ``return_label_overlap`` with
``weighted=True``); ``average="sample"`` is the plain mean over samples (the formula of the
paper's section 2(f), `vlm_lens.metrics.neighbourhood_overlap`). On balanced classes (the
paper's 100 × 100 images) both are equal.

A class with at most k images caps its members' overlap below 1 whatever the representations;
`chi_out` then warns with `vlm_lens.errors.UninformativeMetricWarning`.

χ is undefined, and `chi_out` raises `vlm_lens.errors.VLMInputError` naming the fix, when there
are not more than k samples or only one class (every neighbour would share the label: χ = 1
whatever the representations).

Example:
    >>> import torch
    >>> x = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    >>> chi_out(x, ["cat"] * 3 + ["dog"] * 3, k=2)
    1.0
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor

from vlm_lens.errors import UninformativeMetricWarning, VLMInputError
from vlm_lens.metrics.neighbourhood import AVERAGES, Average, neighbourhood_overlap

__all__ = ["chi_out"]


def chi_out(
    representations: Float[Tensor, "n d"],
    labels: Sequence[str],
    k: int = 30,
    *,
    average: Average = "class",
) -> float:
    """χ_out of `representations` with `labels`.

    Args:
        representations: one row per image, ``[n, d]`` (the last token's final-layer residual).
        labels: one class label per row, ``[n]``.
        k: neighbours (the paper: 30); needs ``n > k``.
        average: ``"class"`` (mean over classes of the per-class mean, the paper's dadapy
            call; default) or ``"sample"`` (mean over samples).

    Returns:
        χ in ``[0, 1]``; chance is about ``1 / #classes``
        (`vlm_lens.metrics.overlap_chance_level`).

    Raises:
        VLMInputError: if ``n <= k``, there is only one class, the lengths differ or `average`
            is unknown.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
        >>> chi_out(x, ["a", "a", "b", "b"], k=1)  # the point at 2.0 ties, toward index 1 ("a")
        0.75
    """
    n = int(representations.shape[0]) if representations.ndim >= 1 else 0
    if len(labels) != n:
        raise VLMInputError(
            f"chi_out got {n} representations but {len(labels)} labels; give one label per row"
        )
    if n <= k:
        raise VLMInputError(
            f"chi_out with k={k} neighbours needs more than {k} images, but there are {n}; "
            f"read more images (the paper uses 10,000) or pass a smaller k"
        )
    classes = sorted({str(label) for label in labels})
    if len(classes) < 2:
        raise VLMInputError(
            f"chi_out needs at least two classes, but every image has the label {classes!r}, so "
            "every neighbour agrees and χ = 1 says nothing; give images of several classes"
        )
    smallest, size = min((count, c) for c, count in Counter(map(str, labels)).items())[::-1]
    if size - 1 < k:
        warnings.warn(
            f"class {smallest!r} has {size} images, so its χ is at most {size - 1}/{k} "
            f"= {(size - 1) / k:.3f} whatever the representations; give every class more "
            f"than k = {k} images (the paper: 100 per class)",
            UninformativeMetricWarning,
            stacklevel=2,
        )
    if average not in AVERAGES:
        raise VLMInputError(f"average must be 'sample' or 'class'; got {average!r}")
    names = [str(x) for x in labels]
    return neighbourhood_overlap(representations, names, k=k, average=average, warn=False)

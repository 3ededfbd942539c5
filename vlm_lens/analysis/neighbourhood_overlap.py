"""Neighbourhood overlap χ per layer and per role: where does a token position become semantic?

The paper (section 2(f)) takes, for every image of a labelled set (ImageNet, 100 classes × 100
images), the residual stream at one position (the gate, the mean of the image tokens, ...) at
every layer, and reports χ, the fraction of each sample's ``k = 30`` Euclidean nearest
neighbours that share its class, averaged per class first as the paper's dadapy call does
(``average="class"``; ``"sample"`` for the plain mean), against the chance level. This module
applies `vlm_lens.metrics.neighbourhood.neighbourhood_overlap` to ``[layers, n, d]``
activations, gathered by the caller (e.g. from ``run_with_cache`` restricted to a role). When
the labels and k make χ uninformative (`vlm_lens.metrics.neighbourhood.overlap_caveat`) it
warns once with `vlm_lens.errors.UninformativeMetricWarning` and keeps the reason in
`OverlapResult.warning`.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> labels = [0] * 10 + [1] * 10
    >>> semantic = torch.randn(2, 20, 4, generator=g) + torch.tensor(labels)[None, :, None] * 9
    >>> noise = torch.randn(2, 20, 4, generator=g)
    >>> res = neighbourhood_overlap({"gate": semantic, "image": noise}, labels, k=3)
    >>> res.overlap["gate"].tolist()
    [1.0, 1.0]
    >>> list(res.to_frame().columns)
    ['layer', 'role', 'overlap', 'chance']
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float
from torch import Tensor

from vlm_lens.analysis.persist import register_result
from vlm_lens.analysis.provenance import Provenance
from vlm_lens.errors import UninformativeMetricWarning
from vlm_lens.metrics.neighbourhood import Average, overlap_caveat, overlap_chance_level
from vlm_lens.metrics.neighbourhood import neighbourhood_overlap as _overlap

__all__ = ["OverlapResult", "neighbourhood_overlap"]

DEFAULT_ROLE = "representation"
"""Role name given to a single ``[layers, n, d]`` array passed without ``role``."""

Representations = Float[Tensor, "layers n d"] | np.ndarray
"""Activations of one position per sample at every layer: ``[layers, n, d]``."""


@register_result
@dataclass(frozen=True, eq=False)
class OverlapResult:
    """χ per layer for each role, with the chance level.

    Attributes:
        overlap: role -> ``[layers]`` float64 array of χ.
        chance: χ expected from random neighbours (`overlap_chance_level` of the labels,
            same average).
        k: neighbours per sample.
        n: samples.
        average: ``"class"`` (mean of the class means, the paper's) or ``"sample"``.
        warning: why χ is uninformative for these labels and k
            (`vlm_lens.metrics.neighbourhood.overlap_caveat`), or None.
        meta: what produced the result: model, inputs, settings (`vlm_lens.analysis.provenance`);
            `save_result` keeps it.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> res = neighbourhood_overlap(rng.normal(size=(2, 10, 4)), [0] * 5 + [1] * 5, k=2)
        >>> res.roles, round(res.chance, 3), res.k, res.n, res.average, res.warning
        (('representation',), 0.444, 2, 10, 'class', None)
    """

    overlap: Mapping[str, np.ndarray]
    chance: float
    k: int
    n: int
    average: str = "class"
    warning: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles, in input order."""
        return tuple(self.overlap)

    def to_frame(self) -> pd.DataFrame:
        """One row per (role, layer): columns ``layer, role, overlap, chance``."""
        frames = [
            pd.DataFrame(
                {
                    "layer": np.arange(len(values), dtype=np.int64),
                    "role": role,
                    "overlap": np.asarray(values, dtype=np.float64),
                    "chance": self.chance,
                }
            )
            for role, values in self.overlap.items()
        ]
        return pd.concat(frames, ignore_index=True)


def _check_layers(name: str, x: Representations) -> None:
    if len(x.shape) != 3:
        raise ValueError(
            f"representations for role {name!r} must be [layers, n, d]; got shape "
            f"{tuple(x.shape)}. For a single layer pass x[None]."
        )


def neighbourhood_overlap(
    representations: Representations | Mapping[str, Representations],
    labels: Sequence[object] | np.ndarray | Tensor,
    k: int = 30,
    role: str | None = None,
    *,
    average: Average = "class",
    chunk_size: int | None = None,
) -> OverlapResult:
    """χ at every layer, for one or several roles.

    Args:
        representations: ``[layers, n, d]`` (torch on any device, or numpy), or a mapping
            ``{role: [layers, n, d]}``. Different roles may have different layer counts and
            widths but must share the n samples.
        labels: ``[n]`` class of every sample (ints, strings, ...).
        k: neighbours per sample (paper: 30); ``1 <= k < n``.
        role: for a single array, the role name in the result (default
            ``"representation"``); for a mapping, compute only this role.
        average: ``"class"`` (default: the mean over classes of each class's mean overlap, as
            the paper's dadapy ``return_label_overlap``) or ``"sample"`` (the plain mean).
        chunk_size: rows of the distance matrix computed at once (see
            `vlm_lens.metrics.neighbourhood.neighbourhood_overlap`).

    Returns:
        An `OverlapResult`.

    Raises:
        ValueError: for arrays that are not 3-D, a sample count different from ``len(labels)``,
            ``k >= n``, an unknown `average`, or a `role` missing from the mapping.

    Warns:
        UninformativeMetricWarning: once, when a class has at most k samples or there is one
            class (`vlm_lens.metrics.neighbourhood.overlap_caveat`).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = [0] * 5 + [1] * 5
        >>> x = rng.normal(size=(2, 10, 4)) + 10 * np.array(labels)[None, :, None]
        >>> neighbourhood_overlap(x, labels, k=2).overlap["representation"].tolist()
        [1.0, 1.0]
    """
    if isinstance(representations, Mapping):
        reps = dict(representations)
        if role is not None:
            if role not in reps:
                raise ValueError(
                    f"role {role!r} is not among the representations' roles {sorted(reps)}; "
                    "pass one of them or role=None for all."
                )
            reps = {role: reps[role]}
        if not reps:
            raise ValueError("representations is an empty mapping; pass at least one role.")
    else:
        reps = {role or DEFAULT_ROLE: representations}
    n_labels = len(labels)
    chance = overlap_chance_level(labels, average=average)  # also checks `average`
    overlap: dict[str, np.ndarray] = {}
    for name, x in reps.items():
        _check_layers(name, x)
        if x.shape[1] != n_labels:
            raise ValueError(
                f"representations for role {name!r} have {x.shape[1]} samples (shape "
                f"{tuple(x.shape)}, [layers, n, d]) but labels has {n_labels}; pass one label "
                "per sample."
            )
        overlap[name] = np.array(
            [
                _overlap(x[layer], labels, k, average=average, chunk_size=chunk_size, warn=False)
                for layer in range(x.shape[0])
            ],
            dtype=np.float64,
        )
    reason = overlap_caveat(labels, k)
    if reason is not None:
        warnings.warn(f"χ is uninformative: {reason}", UninformativeMetricWarning, stacklevel=2)
    provenance = Provenance("neighbourhood_overlap", k=k, role=role, average=average)
    for name, x in reps.items():
        provenance.add_array(f"representations[{name}]", x)
    provenance.add_array("labels", np.asarray([str(label) for label in labels]))
    return OverlapResult(
        overlap=overlap,
        chance=chance,
        k=k,
        n=n_labels,
        average=average,
        warning=reason,
        meta=provenance.meta(),
    )

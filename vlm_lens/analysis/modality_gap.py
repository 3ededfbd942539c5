"""Modality gap per layer: |cos| between text and image tokens, and cluster homogeneity.

The paper (section 2(a)) takes, for each of 10,000 Flickr30k samples, one random text token and
one random image token, and at every layer reports

1. the median of ``|cos(text_i, image_j)|`` over all text-image pairs, with the quartiles
   (`vlm_lens.metrics.cosine.abs_cosine_quantiles`);
2. the homogeneity of density clusters of the pooled text and image vectors with respect to
   the modality (`vlm_lens.metrics.clustering.cluster_homogeneity`): near 1 when the
   modalities live apart (Chameleon), lower when they mix (LLaVA, Pixtral). It is NaN, with
   the reason in `ModalityGapResult.reasons`, at layers where fewer than two clusters were
   found; the number of clusters and the noise fraction are kept for every layer.

This module takes the gathered ``[layers, n, d]`` activations and returns a small result. When a
modality has too few points for a cluster of its own
(`vlm_lens.metrics.clustering.clustering_caveat`) it warns once with
`vlm_lens.errors.UninformativeMetricWarning` and keeps the reason in
`ModalityGapResult.warning`.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> text = torch.randn(2, 30, 8, generator=g) + 10 * torch.eye(8)[0]
    >>> image = torch.randn(2, 30, 8, generator=g) + 10 * torch.eye(8)[1]
    >>> res = modality_gap(text, image, min_cluster_size=8, min_samples=8)
    >>> res.homogeneity.tolist(), res.n_clusters.tolist()
    ([1.0, 1.0], [2, 2])
    >>> list(res.to_frame().columns)
    ['layer', 'median_abs_cos', 'q1', 'q3', 'homogeneity', 'n_clusters', 'noise_fraction', 'reason']
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens.analysis.persist import register_result
from vlm_lens.analysis.provenance import Provenance
from vlm_lens.errors import UninformativeMetricWarning
from vlm_lens.metrics.clustering import NoiseHandling, cluster_homogeneity, clustering_caveat
from vlm_lens.metrics.cosine import abs_cosine_quantiles

__all__ = ["ModalityGapResult", "modality_gap"]


@register_result
@dataclass(frozen=True, eq=False)
class ModalityGapResult:
    """Per-layer modality-gap metrics (every array is ``[layers]``).

    Attributes:
        median_abs_cos: median of |cos| over all text-image pairs.
        q1: first quartile of |cos|.
        q3: third quartile of |cos|.
        homogeneity: cluster homogeneity of the modalities; NaN where not clustered or
            undefined (see `reasons`).
        n_clusters: clusters found per layer (int64), or None when not clustered.
        noise_fraction: fraction of clustered points the method left as noise, or None.
        method: the clustering method, or None when not clustered.
        n_text: text vectors per layer.
        n_image: image vectors per layer.
        reasons: per layer, why the homogeneity is undefined (fewer than two clusters), or
            None where it is defined; None when not clustered.
        warning: why clustering these inputs is uninformative
            (`vlm_lens.metrics.clustering.clustering_caveat`), or None.
        meta: what produced the result: model, inputs, settings (`vlm_lens.analysis.provenance`);
            `save_result` keeps it.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> res = modality_gap(rng.random((2, 10, 8)), rng.random((2, 12, 8)), cluster=False)
        >>> res.n_text, res.n_image, res.to_frame()["n_clusters"].tolist()
        (10, 12, [<NA>, <NA>])
    """

    median_abs_cos: np.ndarray
    q1: np.ndarray
    q3: np.ndarray
    homogeneity: np.ndarray
    n_clusters: np.ndarray | None
    noise_fraction: np.ndarray | None
    method: str | None
    n_text: int
    n_image: int
    reasons: tuple[str | None, ...] | None = None
    warning: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: ``layer, median_abs_cos, q1, q3, homogeneity, n_clusters,
        noise_fraction, reason``.

        ``n_clusters`` is a nullable integer column and ``noise_fraction`` NaN when not
        clustered; ``reason`` says why a layer's homogeneity is undefined (None where defined).
        """
        layers = len(self.median_abs_cos)
        n_clusters = (
            pd.array(self.n_clusters, dtype="Int64")
            if self.n_clusters is not None
            else pd.array([pd.NA] * layers, dtype="Int64")
        )
        noise = (
            np.asarray(self.noise_fraction, dtype=np.float64)
            if self.noise_fraction is not None
            else np.full(layers, np.nan)
        )
        reasons = list(self.reasons) if self.reasons is not None else [None] * layers
        return pd.DataFrame(
            {
                "layer": np.arange(layers, dtype=np.int64),
                "median_abs_cos": self.median_abs_cos,
                "q1": self.q1,
                "q3": self.q3,
                "homogeneity": self.homogeneity,
                "n_clusters": n_clusters,
                "noise_fraction": noise,
                "reason": pd.Series(reasons, dtype=object),
            }
        )


def _as_3d(x: Float[Tensor, "layers n d"] | np.ndarray, name: str) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 3:
        raise ValueError(
            f"{name} must be [layers, n, d]; got shape {tuple(t.shape)}. For a single layer "
            "pass x[None]."
        )
    return t


def _cluster_subset(n: int, m: int, max_points: int | None, seed: int) -> np.ndarray | None:
    """Indices into the pooled ``[n + m]`` set to cluster, stratified by modality, or None."""
    if max_points is None or n + m <= max_points:
        return None
    if max_points < 2:
        raise ValueError(f"max_cluster_points must be at least 2; got {max_points}.")
    rng = np.random.default_rng(seed)
    n_text = min(n, max(1, round(max_points * n / (n + m))))
    n_image = min(m, max_points - n_text)
    text = rng.choice(n, size=n_text, replace=False)
    image = n + rng.choice(m, size=n_image, replace=False)
    return np.sort(np.concatenate([text, image]))


def modality_gap(
    text: Float[Tensor, "layers n d"] | np.ndarray,
    image: Float[Tensor, "layers m d"] | np.ndarray,
    cluster: bool = True,
    method: Literal["hdbscan", "adp"] = "hdbscan",
    seed: int = 0,
    max_cluster_points: int | None = None,
    *,
    noise: NoiseHandling = "nearest",
    min_cluster_size: int = 16,
    min_samples: int | None = 16,
) -> ModalityGapResult:
    """|cos| quartiles between text and image vectors, and modality homogeneity, per layer.

    Args:
        text: ``[layers, n, d]`` text-token vectors (e.g. one random text token per sample).
        image: ``[layers, m, d]`` image-token vectors, same layers and width.
        cluster: also cluster the pooled vectors and score the homogeneity (the slow part:
            ``O((n + m)²)`` time and memory per layer with HDBSCAN).
        method: ``"hdbscan"`` (default, scikit-learn) or ``"adp"`` (the paper's dadapy ADP;
            needs dadapy, which cannot be installed next to vlm_lens today: see
            `vlm_lens.metrics.clustering`).
        seed: seeds the subsample drawn when `max_cluster_points` applies.
        max_cluster_points: cluster at most this many pooled points per layer, a random
            subsample stratified by modality, the same points at every layer. None: all.
            The cosine quartiles always use every pair.
        noise: how HDBSCAN's noise points are scored, see
            `vlm_lens.metrics.clustering.NoiseHandling`.
        min_cluster_size: HDBSCAN's smallest cluster.
        min_samples: HDBSCAN's density scale (neighbours, self included).

    Returns:
        A `ModalityGapResult`.

    Raises:
        ValueError: for inputs that are not 3-D or whose layer counts or widths differ.
        ImportError: for ``method="adp"`` without dadapy.

    Warns:
        UninformativeMetricWarning: once, when a modality has fewer points than a cluster needs
            (`vlm_lens.metrics.clustering.clustering_caveat`).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> res = modality_gap(rng.random((3, 10, 8)), rng.random((3, 12, 8)), cluster=False)
        >>> res.median_abs_cos.shape, res.homogeneity.shape, res.n_clusters
        ((3,), (3,), None)
    """
    t, v = _as_3d(text, "text"), _as_3d(image, "image")
    if t.shape[0] != v.shape[0] or t.shape[2] != v.shape[2]:
        raise ValueError(
            f"text and image must have the same layers and width; got text {tuple(t.shape)} "
            f"and image {tuple(v.shape)} ([layers, n, d])."
        )
    layers, n, m = t.shape[0], t.shape[1], v.shape[1]
    provenance = Provenance(
        "modality_gap",
        cluster=cluster,
        method=method,
        seed=seed,
        max_cluster_points=max_cluster_points,
        noise=noise,
        min_cluster_size=min_cluster_size,
        min_samples=min_samples,
    )
    provenance.add_array("text", t)
    provenance.add_array("image", v)
    quartiles = np.empty((layers, 3), dtype=np.float64)
    homogeneity = np.full(layers, np.nan, dtype=np.float64)
    n_clusters = np.zeros(layers, dtype=np.int64)
    noise_fraction = np.zeros(layers, dtype=np.float64)
    subset = _cluster_subset(n, m, max_cluster_points, seed) if cluster else None
    modality = np.concatenate([np.zeros(n, dtype=np.int64), np.ones(m, dtype=np.int64)])
    if subset is not None:
        modality = modality[subset]
    reasons: list[str | None] = [None] * layers
    caveat = None
    if cluster:
        # the smallest group a cluster can be: HDBSCAN's sizes, ADP's density_k (16)
        size = 16 if method == "adp" else max(min_cluster_size, min_samples or min_cluster_size)
        caveat = clustering_caveat(modality, size)
        if caveat is not None:
            warnings.warn(
                f"cluster homogeneity is uninformative: {caveat}",
                UninformativeMetricWarning,
                stacklevel=2,
            )
    for layer in range(layers):
        quartiles[layer] = abs_cosine_quantiles(t[layer], v[layer], (0.25, 0.5, 0.75))
        if not cluster:
            continue
        pooled = torch.cat([t[layer].to(torch.float64), v[layer].to(torch.float64)])
        if subset is not None:
            pooled = pooled[torch.as_tensor(subset, device=pooled.device)]
        score = cluster_homogeneity(
            pooled,
            modality,
            method,
            noise=noise,
            min_cluster_size=min_cluster_size,
            min_samples=min_samples,
            warn=False,
        )
        reasons[layer] = score.reason
        homogeneity[layer] = score.homogeneity
        n_clusters[layer] = score.n_clusters
        noise_fraction[layer] = score.noise_fraction
    return ModalityGapResult(
        median_abs_cos=quartiles[:, 1].copy(),
        q1=quartiles[:, 0].copy(),
        q3=quartiles[:, 2].copy(),
        homogeneity=homogeneity,
        n_clusters=n_clusters if cluster else None,
        noise_fraction=noise_fraction if cluster else None,
        method=method if cluster else None,
        n_text=n,
        n_image=m,
        reasons=tuple(reasons) if cluster else None,
        warning=caveat,
        meta=provenance.meta(),
    )

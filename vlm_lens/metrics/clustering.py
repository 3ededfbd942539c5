"""Cluster homogeneity: do density clusters of pooled vectors separate the modalities?

The paper (section 2(a)) pools the text and image vectors of a layer, clusters them by density
with cosine distances, and scores the clusters with the homogeneity of the modality labels
(``sklearn.metrics.homogeneity_score(labels_true=modality, labels_pred=cluster)``): 1 when
every cluster holds a single modality, near 0 when clusters mix modalities in their overall
proportions.

Two clustering methods:

- ``"hdbscan"`` (default): scikit-learn's `~sklearn.cluster.HDBSCAN` on cosine distance. No
  extra dependency. Cost: the full ``n × n`` distance matrix (``8·n²`` bytes: 3.2 GB for
  20,000 points) and O(n²) time; subsample for larger sets.
- ``"adp"``: the paper's recipe with dadapy (Advanced Density Peaks: cosine k-NN distances with
  ``maxk=128``, Gride intrinsic dimension at the fourth scale, k-NN density with ``k=16``,
  ``Z=1.65``). Needs dadapy importable next to vlm_lens, which no release allows today: dadapy
  0.3.4 (the latest) requires ``numpy<2`` and its shipped C sources do not build against numpy
  2, while vlm_lens' dependencies (pyarrow, through datasets) need numpy 2. That is why it is
  not the default, and why vlm_lens has no ``adp`` extra.

HDBSCAN leaves low-density points unassigned ("noise", label -1); ADP assigns every point.
`NoiseHandling` says what happens to noise before scoring; the default ``"nearest"`` gives each
noise point the cluster of its most cosine-similar clustered point, so that, as with ADP, every
point is scored.

Homogeneity is **undefined** (NaN, with `ClusterScore.reason` saying why) when the method found
fewer than two clusters: with no cluster (HDBSCAN: every point noise) or a single one (ADP often
merges everything into one peak) the score is 0 whatever the data (``homogeneity_score`` of one
cluster holding both modalities), which would read as "the modalities mix". It is also undefined
when the scored points hold a single modality (sklearn's convention would give 1). Every score
carries the number of clusters and the noise fraction.

Clustering is uninformative when a modality has too few points to form a cluster of its own:
`clustering_caveat` states the rule (fewer than ``min_size`` points in a modality, ``min_size``
being HDBSCAN's ``max(min_cluster_size, min_samples)`` or ADP's ``density_k``), and
`cluster_homogeneity` warns with `vlm_lens.errors.UninformativeMetricWarning`.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> text = rng.normal(size=(40, 8)) + 6 * np.eye(8)[0]
    >>> image = rng.normal(size=(40, 8)) + 6 * np.eye(8)[1]
    >>> score = cluster_homogeneity(np.vstack([text, image]), [0] * 40 + [1] * 40,
    ...                             min_cluster_size=10)
    >>> score.homogeneity, score.n_clusters
    (1.0, 2)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from sklearn.metrics import homogeneity_score
from torch import Tensor

from vlm_lens.errors import UninformativeMetricWarning

__all__ = [
    "ClusterScore",
    "NoiseHandling",
    "cluster_homogeneity",
    "clustering_caveat",
    "homogeneity_from_clusters",
]

NoiseHandling = Literal["nearest", "exclude", "singleton"]
"""What happens to noise points (cluster label -1) before scoring.

- ``"nearest"``: each noise point joins the cluster of its most cosine-similar clustered point
  (every point is scored, as with ADP).
- ``"exclude"``: noise points are left out of the score; `ClusterScore.noise_fraction` says how
  many.
- ``"singleton"``: each noise point is its own cluster. A singleton is trivially pure, so this
  *inflates* homogeneity; offered for comparison only.

In every mode fewer than two clusters found (noise is not a cluster) makes the homogeneity NaN,
with the reason.
"""

_NOISE_MODES = ("nearest", "exclude", "singleton")
_METHODS = ("hdbscan", "adp")
_ADP_INSTALL = (
    "dadapy 0.3.4 requires numpy<2 and cannot share an environment with vlm_lens (numpy 2); "
    "install a dadapy release built for numpy 2 when there is one, or run dadapy in its own "
    "environment on the representations (save_result / numpy.save)"
)


@dataclass(frozen=True, eq=False)
class ClusterScore:
    """Homogeneity of a clustering with respect to modality labels.

    Attributes:
        homogeneity: ``homogeneity_score(modality, cluster)`` over the scored points, in
            ``[0, 1]``; NaN when undefined (see `reason`).
        n_clusters: clusters found by the clustering method (noise is not a cluster).
        noise_fraction: fraction of points the method left as noise (0 for ADP).
        labels: ``[n]`` cluster label of every point as scored, after `NoiseHandling`;
            ``-1`` marks points left out (``noise="exclude"``).
        method: ``"hdbscan"``, ``"adp"`` or ``"given"`` (labels passed in).
        reason: why `homogeneity` is undefined (fewer than two clusters, a single modality
            scored), or None when it is defined.

    Example:
        >>> score = homogeneity_from_clusters([0, 0, 1, 1], [0, 0, 1, -1])  # one noise point
        >>> score.homogeneity, score.n_clusters, score.noise_fraction, score.labels.tolist()
        (1.0, 2, 0.25, [0, 0, 1, -1])
        >>> one = homogeneity_from_clusters([0, 0, 1, 1], [0, 0, 0, 0])
        >>> one.homogeneity, one.reason[:30]
        (nan, 'the clustering found 1 cluster')
    """

    homogeneity: float
    n_clusters: int
    noise_fraction: float
    labels: np.ndarray
    method: str
    reason: str | None = None


def _to_numpy_1d(labels: Sequence[object] | np.ndarray | Tensor, name: str) -> np.ndarray:
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one per point); got {arr.shape}.")
    return arr


def _unit_rows(x: Float[Tensor, "n d"] | np.ndarray) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    t = t.to(torch.float64)
    if t.ndim != 2:
        raise ValueError(f"x must be [n, d] (one vector per point); got {tuple(t.shape)}.")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("x holds NaN or infinite values; clean the vectors first.")
    return torch.nn.functional.normalize(t, dim=1)


def _assign_noise_to_nearest(unit: Tensor, clusters: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Give each noise point the cluster of its most cosine-similar clustered point."""
    out = clusters.copy()
    noise = np.flatnonzero(clusters < 0)
    core = np.flatnonzero(clusters >= 0)
    if noise.size == 0:
        return out
    if core.size == 0:
        out[:] = 0
        return out
    core_vecs = unit[torch.as_tensor(core, device=unit.device)]
    for start in range(0, noise.size, chunk):
        rows = noise[start : start + chunk]
        sims = unit[torch.as_tensor(rows, device=unit.device)] @ core_vecs.T
        nearest = sims.argmax(dim=1).cpu().numpy()  # first maximum: lowest index on ties
        out[rows] = clusters[core[nearest]]
    return out


def _undefined_reason(
    who: str, n: int, n_clusters: int, noise_fraction: float, scored_modalities: int
) -> str | None:
    """Why the homogeneity of this clustering is undefined, or None."""
    if n_clusters == 0:
        return (
            f"{who} found no cluster (all {n} points are noise), so homogeneity is undefined; "
            "lower min_cluster_size / min_samples or pass more points"
        )
    if n_clusters == 1:
        return (
            f"{who} found 1 cluster ({noise_fraction:.0%} noise): a single cluster scores 0 "
            "whatever the modalities do, so homogeneity is undefined; lower min_cluster_size / "
            "min_samples (HDBSCAN) or Z (ADP), or pass more points"
        )
    if scored_modalities < 2:
        return "the scored points hold a single modality, so homogeneity is undefined"
    return None


def clustering_caveat(
    modality_labels: Sequence[object] | np.ndarray | Tensor, min_size: int
) -> str | None:
    """Why clustering these points could not separate the modalities, or None.

    The rule: each modality needs at least `min_size` points (HDBSCAN's
    ``max(min_cluster_size, min_samples)``, ADP's ``density_k``) to form a cluster of its own;
    with fewer, homogeneity cannot reach 1 however far apart the modalities are, and with a
    single modality it is meaningless.

    Args:
        modality_labels: ``[n]`` modality of every point.
        min_size: the smallest group the method can call a cluster.

    Returns:
        A sentence naming the limit and the fix, or None.

    Example:
        >>> clustering_caveat([0] * 20 + [1] * 20, min_size=16) is None
        True
        >>> clustering_caveat([0] * 20 + [1] * 5, min_size=16)[:40]
        'modality 1 has 5 points, fewer than the '
    """
    modality = _to_numpy_1d(modality_labels, "modality_labels")
    names, counts = np.unique(modality, return_counts=True)
    if names.size < 2:
        return "every point has the same modality, so homogeneity says nothing; pool both"
    smallest = int(np.argmin(counts))
    if counts[smallest] < min_size:
        return (
            f"modality {names[smallest].item()!r} has {int(counts[smallest])} points, fewer than "
            f"the {min_size} a cluster needs, so it cannot form a cluster of its own; pass at "
            f"least {min_size} points per modality or lower min_cluster_size / min_samples"
        )
    return None


def homogeneity_from_clusters(
    modality_labels: Sequence[object] | np.ndarray | Tensor,
    cluster_labels: Sequence[int] | np.ndarray | Tensor,
    *,
    noise: NoiseHandling = "exclude",
    x: Float[Tensor, "n d"] | np.ndarray | None = None,
) -> ClusterScore:
    """Score a given clustering (label -1 = noise) with the homogeneity of the modalities.

    Args:
        modality_labels: ``[n]`` modality of every point (e.g. 0 text, 1 image).
        cluster_labels: ``[n]`` cluster of every point, negative for noise.
        noise: how noise is treated, see `NoiseHandling`.
        x: ``[n, d]`` vectors; needed only for ``noise="nearest"``.

    Returns:
        A `ClusterScore` with ``method="given"``; its homogeneity is NaN, with the reason,
        when fewer than two clusters were given or the scored points hold one modality.

    Raises:
        ValueError: for mismatched lengths, an unknown `noise` mode, or ``"nearest"`` without
            `x`.

    Example:
        >>> homogeneity_from_clusters([0, 0, 1, 1], [0, 0, 1, -1]).homogeneity
        1.0
        >>> homogeneity_from_clusters([0, 0, 1, 1], [0, 1, 0, 1]).homogeneity
        0.0
    """
    modality = _to_numpy_1d(modality_labels, "modality_labels")
    clusters = _to_numpy_1d(cluster_labels, "cluster_labels").astype(np.int64)
    if modality.shape[0] != clusters.shape[0]:
        raise ValueError(
            f"modality_labels has {modality.shape[0]} entries but cluster_labels has "
            f"{clusters.shape[0]}; pass one of each per point."
        )
    if noise not in _NOISE_MODES:
        raise ValueError(f"noise must be one of {_NOISE_MODES}; got {noise!r}.")
    n = clusters.shape[0]
    is_noise = clusters < 0
    n_clusters = int(np.unique(clusters[~is_noise]).size)
    noise_fraction = float(is_noise.mean()) if n else 0.0
    if noise == "nearest":
        if x is None:
            raise ValueError('noise="nearest" needs the vectors: pass x=[n, d].')
        unit = _unit_rows(x)
        if unit.shape[0] != n:
            raise ValueError(f"x has {unit.shape[0]} rows but there are {n} cluster labels.")
        scored = _assign_noise_to_nearest(unit, clusters)
    elif noise == "singleton":
        scored = clusters.copy()
        top = int(clusters.max(initial=-1))
        scored[is_noise] = np.arange(top + 1, top + 1 + int(is_noise.sum()))
    else:
        scored = clusters.copy()
    keep = scored >= 0
    scored_modalities = int(np.unique(modality[keep]).size)
    reason = _undefined_reason("the clustering", n, n_clusters, noise_fraction, scored_modalities)
    if reason is not None:
        homogeneity = float("nan")
    else:
        homogeneity = float(homogeneity_score(modality[keep], scored[keep]))
    return ClusterScore(homogeneity, n_clusters, noise_fraction, scored, "given", reason)


def _hdbscan_labels(unit: Tensor, min_cluster_size: int, min_samples: int | None) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    model = HDBSCAN(
        min_cluster_size=min_cluster_size,
        min_samples=min_samples,
        metric="cosine",
        copy=True,
    )
    return model.fit(unit.cpu().numpy()).labels_.astype(np.int64)


def _cosine_knn(unit: Tensor, maxk: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances and indices of the ``maxk`` nearest neighbours, self in column 0."""
    n = unit.shape[0]
    dists = np.empty((n, maxk + 1), dtype=np.float64)
    idx = np.empty((n, maxk + 1), dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rows = torch.arange(start, stop)
        d = (1.0 - unit[start:stop] @ unit.T).clamp_(0.0, 2.0)
        d[rows - start, rows] = torch.inf
        vals, nn = torch.topk(d, maxk, dim=1, largest=False, sorted=True)
        dists[start:stop, 0], idx[start:stop, 0] = 0.0, rows.numpy()
        dists[start:stop, 1:], idx[start:stop, 1:] = vals.cpu().numpy(), nn.cpu().numpy()
    # Duplicated points have zero distance, which breaks the log-density: floor it (the paper
    # removed zero distances too).
    dists[:, 1:] = np.maximum(dists[:, 1:], np.finfo(np.float64).eps)
    return dists, idx


def _adp_labels(unit: Tensor, maxk: int, density_k: int, z: float) -> tuple[np.ndarray, int]:
    try:
        from dadapy.data import Data
    except ImportError as err:
        raise ImportError(
            f'cluster_homogeneity(method="adp") needs dadapy, which is not importable: '
            f'{_ADP_INSTALL}. The default method="hdbscan" needs nothing extra.'
        ) from err
    unit = unit.cpu()  # dadapy works on CPU arrays
    maxk = min(maxk, unit.shape[0] - 1)
    if density_k >= maxk:
        raise ValueError(
            f"density_k={density_k} must be smaller than maxk={maxk} (at most n - 1); lower "
            "density_k or pass more points."
        )
    dists, idx = _cosine_knn(unit, maxk)
    data = Data(distances=(dists, idx), maxk=maxk, verbose=False)
    ids, _, _ = data.return_id_scaling_gride(range_max=maxk)
    # The paper takes the Gride estimate at the fourth scale (neighbour ranks 8 -> 16).
    data.intrinsic_dim = float(ids[min(3, len(ids) - 1)])
    data.compute_density_kNN(k=density_k)
    labels = np.asarray(data.compute_clustering_ADP(Z=z, halo=False), dtype=np.int64)
    return labels, int(data.N_clusters)


def cluster_homogeneity(
    x: Float[Tensor, "n d"] | np.ndarray,
    modality_labels: Sequence[object] | np.ndarray | Tensor,
    method: Literal["hdbscan", "adp"] = "hdbscan",
    *,
    noise: NoiseHandling = "nearest",
    min_cluster_size: int = 16,
    min_samples: int | None = 16,
    z: float = 1.65,
    density_k: int = 16,
    maxk: int = 128,
    warn: bool = True,
) -> ClusterScore:
    """Cluster `x` by density on cosine distance and score the clusters' modality homogeneity.

    Args:
        x: ``[n, d]`` pooled vectors (e.g. text and image residuals of one layer).
        modality_labels: ``[n]`` modality of every row (e.g. 0 text, 1 image).
        method: ``"hdbscan"`` (scikit-learn, default) or ``"adp"`` (dadapy, the paper's).
        noise: what happens to HDBSCAN's noise points, see `NoiseHandling`.
        min_cluster_size: HDBSCAN: smallest group that counts as a cluster.
        min_samples: HDBSCAN: neighbours (self included) behind each point's core distance,
            i.e. the density scale; 16 mirrors ADP's ``k=16`` density. None uses
            `min_cluster_size`.
        z: ADP: the merging threshold Z (paper: 1.65).
        density_k: ADP: neighbours of the k-NN density estimate (paper: 16).
        maxk: ADP: neighbours kept per point (paper: 128; capped at ``n - 1``).
        warn: warn with `vlm_lens.errors.UninformativeMetricWarning` when `clustering_caveat`
            finds a modality too small for a cluster of its own.

    Returns:
        A `ClusterScore`; homogeneity NaN, with the reason, when fewer than two clusters were
        found.

    Raises:
        ValueError: for mismatched lengths, an unknown method or noise mode, or fewer points
            than `min_samples` / `min_cluster_size`.
        ImportError: for ``method="adp"`` without dadapy, saying why it cannot be installed
            next to vlm_lens today.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> blob = rng.normal(size=(60, 8))
        >>> blob_score = cluster_homogeneity(blob, rng.integers(0, 2, 60), min_cluster_size=10)
        >>> blob_score.n_clusters, blob_score.homogeneity, blob_score.reason[:26]
        (0, nan, 'HDBSCAN found no cluster (')

        One structureless blob: no cluster, so the homogeneity is undefined (it used to read 0).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}.")
    unit = _unit_rows(x)
    modality = _to_numpy_1d(modality_labels, "modality_labels")
    n = unit.shape[0]
    if modality.shape[0] != n:
        raise ValueError(
            f"x has {n} rows but modality_labels has {modality.shape[0]}; pass one label per row."
        )
    needed = max(min_cluster_size, min_samples or min_cluster_size)
    if method == "hdbscan" and n < max(needed, 2):
        raise ValueError(
            f"HDBSCAN needs at least min_cluster_size / min_samples = {needed} points; got "
            f"{n}. Pass more points or lower min_cluster_size and min_samples."
        )
    caveat = clustering_caveat(modality, density_k if method == "adp" else needed)
    if warn and caveat is not None:
        warnings.warn(
            f"cluster homogeneity is uninformative: {caveat}",
            UninformativeMetricWarning,
            stacklevel=2,
        )
    if method == "adp":
        clusters, n_found = _adp_labels(unit, maxk, density_k, z)
        score = homogeneity_from_clusters(modality, clusters, noise="exclude")
        reason = _undefined_reason(
            "ADP", n, n_found, 0.0, int(np.unique(modality[score.labels >= 0]).size)
        )
        value = float("nan") if reason is not None else score.homogeneity
        return ClusterScore(value, n_found, 0.0, score.labels, "adp", reason)
    clusters = _hdbscan_labels(unit, min_cluster_size, min_samples)
    score = homogeneity_from_clusters(modality, clusters, noise=noise, x=unit)
    reason = score.reason and score.reason.replace("the clustering", "HDBSCAN", 1)
    return ClusterScore(
        score.homogeneity, score.n_clusters, score.noise_fraction, score.labels, "hdbscan", reason
    )

"""Pure metrics on tensors: no model, no hooks.

Distribution similarity and class flips (patching), neighbourhood overlap χ and its chance
level, |cos| quantiles between two sets, and cluster homogeneity.
"""

from vlm_lens.metrics.clustering import (
    ClusterScore,
    cluster_homogeneity,
    clustering_caveat,
    homogeneity_from_clusters,
)
from vlm_lens.metrics.cosine import abs_cosine_matrix, abs_cosine_quantiles
from vlm_lens.metrics.distributions import (
    flip_rate,
    flip_toward_source,
    histogram_intersection,
    logit_difference,
    softmax_intersection,
)
from vlm_lens.metrics.neighbourhood import (
    Average,
    neighbourhood_overlap,
    neighbourhood_overlap_per_sample,
    overlap_caveat,
    overlap_chance_level,
    overlap_chance_level_per_sample,
)

__all__ = [
    "Average",
    "ClusterScore",
    "abs_cosine_matrix",
    "abs_cosine_quantiles",
    "cluster_homogeneity",
    "clustering_caveat",
    "flip_rate",
    "flip_toward_source",
    "histogram_intersection",
    "homogeneity_from_clusters",
    "logit_difference",
    "neighbourhood_overlap",
    "neighbourhood_overlap_per_sample",
    "overlap_caveat",
    "overlap_chance_level",
    "overlap_chance_level_per_sample",
    "softmax_intersection",
]

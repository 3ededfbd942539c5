"""Pure metrics against independent brute-force computations.

Covers `vlm_lens.metrics.distributions` (histogram intersection, logit differences, flips),
`vlm_lens.metrics.neighbourhood` (χ and its chance level), `vlm_lens.metrics.cosine` (|cos|
quantiles) and `vlm_lens.metrics.clustering` (modality homogeneity of density clusters).
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import torch
from sklearn.cluster import HDBSCAN
from sklearn.metrics import homogeneity_score
from sklearn.neighbors import NearestNeighbors

from tests.conftest import unchecked_types
from vlm_lens.metrics import neighbourhood as nb
from vlm_lens.metrics.clustering import cluster_homogeneity, homogeneity_from_clusters
from vlm_lens.metrics.cosine import abs_cosine_matrix, abs_cosine_quantiles
from vlm_lens.metrics.distributions import (
    flip_rate,
    flip_toward_source,
    histogram_intersection,
    logit_difference,
    softmax_intersection,
)
from vlm_lens.metrics.neighbourhood import (
    neighbourhood_overlap,
    neighbourhood_overlap_per_sample,
    overlap_chance_level,
    overlap_chance_level_per_sample,
)

# ------------------------------------------------------------------ distributions


def test_histogram_intersection_matches_loop_and_total_variation() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(50), size=8)
    q = rng.dirichlet(np.full(50, 0.3), size=8)
    got = histogram_intersection(torch.from_numpy(p), torch.from_numpy(q)).numpy()
    loop = [
        sum(min(a, b) for a, b in zip(pr, qr, strict=True)) for pr, qr in zip(p, q, strict=True)
    ]
    tv = 0.5 * np.abs(p - q).sum(axis=1)
    np.testing.assert_allclose(got, loop, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, 1 - tv, rtol=0, atol=1e-12)
    # numpy in, same answer; identical distributions give 1, disjoint give 0.
    np.testing.assert_allclose(histogram_intersection(p, q).numpy(), got)
    assert histogram_intersection(p[0], p[0]).item() == pytest.approx(1.0)
    assert histogram_intersection(np.array([1.0, 0.0]), np.array([0.0, 1.0])).item() == 0.0


def test_softmax_intersection_is_float64_softmax_then_intersection() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 1000, generator=g) * 5, torch.randn(4, 1000, generator=g) * 5
    got = softmax_intersection(a.half(), b.half())
    assert got.dtype == torch.float64
    ref = torch.minimum(
        torch.softmax(a.half().double(), -1), torch.softmax(b.half().double(), -1)
    ).sum(-1)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(softmax_intersection(a, a), torch.ones(4, dtype=torch.float64))


@pytest.mark.bad_input_types
def test_histogram_intersection_rejects_different_vocabularies() -> None:
    with pytest.raises(ValueError, match="last .*vocabulary"):
        histogram_intersection(torch.ones(3) / 3, torch.ones(4) / 4)


def test_logit_difference_int_and_per_row_ids() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 11, generator=g)
    a = torch.randint(0, 11, (2, 3), generator=g)
    b = torch.randint(0, 11, (2, 3), generator=g)
    got = logit_difference(logits, a, b)
    for i, j in itertools.product(range(2), range(3)):
        assert got[i, j] == logits[i, j, a[i, j]] - logits[i, j, b[i, j]]
    torch.testing.assert_close(logit_difference(logits, 4, 7), logits[..., 4] - logits[..., 7])
    np.testing.assert_allclose(
        logit_difference(logits.numpy(), a.numpy(), 7).numpy(),
        (logits.gather(-1, a[..., None])[..., 0] - logits[..., 7]).numpy(),
    )


@pytest.mark.bad_input_types
def test_logit_difference_bad_ids() -> None:
    logits = torch.zeros(3, 5)
    with pytest.raises(ValueError, match=r"token_a must be an int or hold one token id per row"):
        logit_difference(logits, torch.tensor([1, 2]), 0)
    with pytest.raises(ValueError, match="out of range"):
        logit_difference(logits, 0, 5)
    with pytest.raises(ValueError, match="outside"):
        logit_difference(logits, torch.tensor([0, 1, 9]), 0)
    with pytest.raises(ValueError, match="integer token ids"):
        logit_difference(logits, torch.tensor([0.0, 1.0, 2.0]), 0)


def test_flip_toward_source_truth_table() -> None:
    values = [-2.0, -0.0, 0.0, 1e-9, 3.0]
    pairs = list(itertools.product(values, values))
    clean = torch.tensor([c for c, _ in pairs])
    patched = torch.tensor([p for _, p in pairs])
    got = flip_toward_source(clean, patched).tolist()
    # d = target - source: the clean run preferred the target, the patched run the source.
    assert got == [c > 0 and p < 0 for c, p in pairs]
    assert flip_rate(clean, patched) == pytest.approx(np.mean(got))
    with pytest.raises(ValueError, match="same shape"), unchecked_types():
        flip_toward_source(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="at least one"):
        flip_rate(torch.ones(0), torch.ones(0))


# ------------------------------------------------------------------ neighbourhood overlap


def brute_overlap_per_sample(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Full numpy distance matrix, self excluded, stable argsort (ties -> lower index)."""
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    return (labels[nn] == labels[:, None]).mean(axis=1)


@pytest.mark.parametrize("k", [1, 5, 30])
def test_overlap_matches_brute_force_on_continuous_data(k: int) -> None:
    rng = np.random.default_rng(k)
    x = rng.normal(size=(150, 6))
    labels = rng.integers(0, 4, size=150)
    per_sample = neighbourhood_overlap_per_sample(x, labels, k)
    np.testing.assert_array_equal(per_sample, brute_overlap_per_sample(x, labels, k))
    sample = neighbourhood_overlap(torch.from_numpy(x), labels, k, average="sample")
    assert sample == pytest.approx(per_sample.mean(), abs=1e-15)
    by_class = np.mean([per_sample[labels == c].mean() for c in np.unique(labels)])
    assert neighbourhood_overlap(torch.from_numpy(x), labels, k) == pytest.approx(by_class)


def test_overlap_ties_go_to_lower_index_like_a_stable_sort() -> None:
    # Integer grid points: many exactly equal distances (exact in float64), and duplicates.
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(80, 3)).astype(np.float64)
    labels = rng.integers(0, 3, size=80)
    for k in (1, 4, 10):
        np.testing.assert_array_equal(
            neighbourhood_overlap_per_sample(x, labels, k), brute_overlap_per_sample(x, labels, k)
        )


def test_overlap_chunked_equals_unchunked_exactly() -> None:
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.normal(size=(203, 16)))
    labels = rng.integers(0, 7, size=203)
    full = neighbourhood_overlap_per_sample(x, labels, 10, chunk_size=203)
    for chunk in (1, 7, 64, 500):
        np.testing.assert_array_equal(
            neighbourhood_overlap_per_sample(x, labels, 10, chunk_size=chunk), full
        )


def test_overlap_known_value_far_from_chance() -> None:
    # 100 points on a line in 10 blocks of 10: with k=2 every point's neighbours are i-1 and
    # i+1 (i+2 for the ends). Block-boundary points (18 of them) see one stranger: 0.5.
    x = np.arange(100, dtype=np.float64)[:, None]
    labels = np.arange(100) // 10
    assert neighbourhood_overlap(x, labels, k=2) == pytest.approx(0.91, abs=1e-12)
    assert overlap_chance_level(labels) == pytest.approx(9 / 99)
    # Same points, labels scrambled: the structure is gone and χ falls toward chance.
    shuffled = np.random.default_rng(0).permutation(labels)
    assert neighbourhood_overlap(x, shuffled, k=2) < 0.3


def test_overlap_semantic_clusters_vs_random_labels() -> None:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(5, 32)) * 6
    labels = np.repeat(np.arange(5), 60)
    x = centres[labels] + rng.normal(size=(300, 32))
    assert neighbourhood_overlap(x, labels, k=30) == 1.0
    random_labels = rng.permutation(labels)
    chi = neighbourhood_overlap(x, random_labels, k=30)
    assert abs(chi - overlap_chance_level(labels)) < 0.05


def test_overlap_matches_sklearn_neighbours_at_n_10000() -> None:
    # The default chunking must handle n = 10,000 (never an n×n matrix); continuous data has no
    # ties, so sklearn's exact kNN is an independent reference.
    rng = np.random.default_rng(6)
    x = rng.normal(size=(10_000, 8)).astype(np.float32)
    labels = rng.integers(0, 100, size=10_000)
    k = 30
    idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)
    idx = np.array([[j for j in row if j != i][:k] for i, row in enumerate(idx)])
    ref = (labels[idx] == labels[:, None]).mean()
    assert neighbourhood_overlap(torch.from_numpy(x), labels, k) == pytest.approx(ref, abs=2e-4)
    assert nb.DEFAULT_CHUNK_ELEMENTS // 10_000 < 10_000


def test_overlap_accepts_string_labels() -> None:
    x = np.array([[0.0], [0.1], [5.0], [5.1]])
    assert neighbourhood_overlap(x, ["dog", "dog", "owl", "owl"], k=1) == 1.0


def test_chance_level_matches_pair_loop_and_monte_carlo() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, size=40)
    n = len(labels)
    pairs = [labels[i] == labels[j] for i in range(n) for j in range(n) if i != j]
    sample = overlap_chance_level(labels, average="sample")
    assert sample == pytest.approx(np.mean(pairs), abs=1e-12)
    per_sample = overlap_chance_level_per_sample(labels)
    assert per_sample.mean() == pytest.approx(sample, abs=1e-12)
    by_class = np.mean([per_sample[labels == c].mean() for c in np.unique(labels)])
    assert overlap_chance_level(labels) == pytest.approx(by_class, abs=1e-12)
    # Monte Carlo: k random other samples per sample.
    k, trials, hits = 10, 400, []
    for _ in range(trials):
        for i in range(n):
            others = rng.choice(np.delete(np.arange(n), i), size=k, replace=False)
            hits.append(np.mean(labels[others] == labels[i]))
    assert np.mean(hits) == pytest.approx(sample, abs=0.01)


@pytest.mark.parametrize(
    ("k", "n_labels", "match"),
    [
        (5, 5, r"k=5 .* only n=5.*use k <= 4"),
        (9, 5, r"k=9 .* only n=5"),
        (0, 5, "positive int"),
        (2, 4, r"5 samples but labels has 4.*one label per row"),
    ],
)
def test_overlap_bad_inputs(k: int, n_labels: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        neighbourhood_overlap(np.zeros((5, 2)), np.zeros(n_labels), k)


def test_overlap_bad_shapes_and_values() -> None:
    with pytest.raises(ValueError, match=r"\[n, d\].*analysis.neighbourhood_overlap"):
        neighbourhood_overlap(np.zeros((2, 5, 3)), np.zeros(5), 2)
    with pytest.raises(ValueError, match="NaN"):
        neighbourhood_overlap(np.array([[0.0], [np.nan], [1.0]]), [0, 0, 1], 1)
    with pytest.raises(ValueError, match="one-dimensional"):
        neighbourhood_overlap(np.zeros((4, 2)), np.zeros((4, 1)), 1)
    with pytest.raises(ValueError, match="at least 2"):
        overlap_chance_level([1])


# ------------------------------------------------------------------ cosine quantiles


def brute_abs_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((len(a), len(b)))
    for i, j in itertools.product(range(len(a)), range(len(b))):
        out[i, j] = abs(a[i] @ b[j]) / (np.linalg.norm(a[i]) * np.linalg.norm(b[j]))
    return out


def test_abs_cosine_quantiles_match_numpy_over_full_block() -> None:
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(23, 5)), rng.normal(size=(17, 5)) + 0.3
    explicit = brute_abs_cos(a, b)
    qs = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
    ref = np.quantile(explicit.reshape(-1), qs)
    for chunk in (None, 1, 4, 100):
        got = abs_cosine_quantiles(torch.from_numpy(a), b, qs, chunk_size=chunk)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(abs_cosine_matrix(a, b).numpy(), explicit, rtol=0, atol=1e-12)
    # float32 inputs are computed in float32.
    got32 = abs_cosine_quantiles(a.astype(np.float32), b.astype(np.float32), qs)
    np.testing.assert_allclose(got32, ref, rtol=0, atol=1e-6)


def test_abs_cosine_uses_every_pair_not_a_triangle() -> None:
    # a_i = b_i and all other pairs orthogonal-ish: the paper's strictly-lower triangle would
    # drop the diagonal ones; the full block keeps them.
    a = np.eye(4)
    b = np.eye(4)
    assert abs_cosine_quantiles(a, b, (1.0,))[0] == 1.0
    full = np.quantile(np.abs(np.eye(4)).reshape(-1), 0.9)
    assert abs_cosine_quantiles(a, b, (0.9,))[0] == pytest.approx(full)


def test_abs_cosine_quantiles_beyond_torch_quantile_limit() -> None:
    # 4100 × 4100 = 16.8M values, above torch.quantile's 16M input limit.
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(4100, 3)), rng.normal(size=(4100, 3))
    ua = a / np.linalg.norm(a, axis=1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=1, keepdims=True)
    ref = np.quantile(np.abs(ua @ ub.T), (0.25, 0.5, 0.75))
    got = abs_cosine_quantiles(a, b)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_abs_cosine_zero_vector_and_bad_inputs() -> None:
    assert abs_cosine_quantiles(np.zeros((1, 3)), np.ones((2, 3)), (1.0,))[0] == 0.0
    with pytest.raises(ValueError, match="same width d"):
        abs_cosine_quantiles(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        abs_cosine_quantiles(np.ones((2, 3)), np.ones((2, 3)), (0.5, 50))
    with pytest.raises(ValueError, match="no rows"):
        abs_cosine_quantiles(np.ones((0, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        abs_cosine_quantiles(np.ones(3), np.ones((2, 3)))


# ------------------------------------------------------------------ cluster homogeneity


def two_modalities(separated: bool, n: int = 80, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if separated:
        text = rng.normal(size=(n, d)) + 12 * np.eye(d)[0]
        image = rng.normal(size=(n, d)) + 12 * np.eye(d)[1]
    else:  # three semantic groups, each holding both modalities
        centres = 12 * np.eye(d)[:3]
        text = centres[rng.integers(0, 3, n)] + rng.normal(size=(n, d))
        image = centres[rng.integers(0, 3, n)] + rng.normal(size=(n, d))
    return np.vstack([text, image])


MODALITY = np.repeat([0, 1], 80)


def test_homogeneity_is_one_for_separated_modalities() -> None:
    score = cluster_homogeneity(two_modalities(True), MODALITY)
    assert score.homogeneity == 1.0
    assert score.n_clusters >= 2
    assert score.method == "hdbscan"
    assert score.labels.shape == (160,)
    assert (score.labels >= 0).all()  # "nearest": every point scored


def test_homogeneity_is_low_for_mixed_modalities() -> None:
    score = cluster_homogeneity(two_modalities(False), MODALITY)
    assert score.n_clusters >= 2  # real clusters were found, they just mix the modalities
    assert score.homogeneity < 0.1


def test_homogeneity_matches_sklearn_on_the_clustering_directly() -> None:
    x = two_modalities(False, seed=1)
    rng = np.random.default_rng(1)
    modality = rng.integers(0, 2, len(x))
    modality[:60] = 0  # some structure, so the value is not trivially 0
    raw = HDBSCAN(min_cluster_size=16, min_samples=16, metric="cosine", copy=True).fit(x).labels_
    kept = raw >= 0
    score = cluster_homogeneity(x, modality, noise="exclude")
    assert score.homogeneity == pytest.approx(homogeneity_score(modality[kept], raw[kept]))
    assert score.n_clusters == len(set(raw[kept]))
    assert score.noise_fraction == pytest.approx(1 - kept.mean())


def test_homogeneity_from_clusters_noise_modes() -> None:
    rng = np.random.default_rng(2)
    modality = rng.integers(0, 2, 50)
    clusters = rng.integers(-1, 4, 50)  # about a fifth noise
    noise = clusters < 0
    excl = homogeneity_from_clusters(modality, clusters, noise="exclude")
    assert excl.homogeneity == pytest.approx(homogeneity_score(modality[~noise], clusters[~noise]))
    assert excl.noise_fraction == pytest.approx(noise.mean())
    assert excl.n_clusters == 4
    single = homogeneity_from_clusters(modality, clusters, noise="singleton")
    relabelled = clusters.copy()
    relabelled[noise] = 100 + np.arange(noise.sum())
    assert single.homogeneity == pytest.approx(homogeneity_score(modality, relabelled))
    # Without noise every mode is plain sklearn.
    clean = rng.integers(0, 4, 50)
    for mode in ("exclude", "singleton"):
        got = homogeneity_from_clusters(modality, clean, noise=mode).homogeneity
        assert got == pytest.approx(homogeneity_score(modality, clean))


def test_noise_nearest_joins_most_similar_cluster() -> None:
    x = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, 0.3], [0.2, 1.0]])
    clusters = np.array([0, 0, 1, 1, -1, -1])
    score = homogeneity_from_clusters([0, 0, 1, 1, 0, 1], clusters, noise="nearest", x=x)
    assert score.labels.tolist() == [0, 0, 1, 1, 0, 1]
    assert score.homogeneity == 1.0
    assert score.noise_fraction == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="needs the vectors"):
        homogeneity_from_clusters([0, 1], [0, -1], noise="nearest")


def test_all_noise_is_undefined_in_each_mode() -> None:
    # No cluster found: "nearest" would pool everything into one blob (score 0) and "singleton"
    # into pure singletons (score 1); neither says anything, so every mode reports NaN + why.
    modality, clusters, x = [0, 1, 0, 1], [-1, -1, -1, -1], np.eye(4)
    for mode in ("exclude", "singleton", "nearest"):
        score = homogeneity_from_clusters(modality, clusters, noise=mode, x=x)  # type: ignore[arg-type]
        assert np.isnan(score.homogeneity), mode
        assert score.n_clusters == 0 and score.noise_fraction == 1.0
        assert score.reason is not None and "no cluster" in score.reason


def test_adp_without_dadapy_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dadapy", None)
    monkeypatch.setitem(sys.modules, "dadapy.data", None)
    with pytest.raises(ImportError, match=r"requires numpy<2 and cannot share an environment"):
        cluster_homogeneity(two_modalities(True), MODALITY, method="adp")


def test_adp_path_calls_dadapy_as_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    # dadapy is not installed here: a stand-in records the calls the paper's recipe makes and
    # checks the cosine k-NN table handed to it against brute force.
    calls: list[tuple[str, object]] = []
    x = two_modalities(True, n=30)
    modality = np.repeat([0, 1], 30)

    class FakeData:
        def __init__(self, distances: tuple[np.ndarray, np.ndarray], maxk: int, verbose: bool):
            dist, idx = distances
            calls.append(("init", maxk))
            assert dist.shape == idx.shape == (60, maxk + 1)
            assert (idx[:, 0] == np.arange(60)).all() and (dist[:, 0] == 0).all()
            unit = x / np.linalg.norm(x, axis=1, keepdims=True)
            brute = 1 - unit @ unit.T
            np.fill_diagonal(brute, np.inf)
            np.testing.assert_allclose(dist[:, 1:], np.sort(brute, axis=1)[:, :maxk], atol=1e-12)
            self.intrinsic_dim: float | None = None
            self.N_clusters = 0

        def return_id_scaling_gride(self, range_max: int) -> tuple[np.ndarray, None, None]:
            calls.append(("gride", range_max))
            return np.array([9.0, 8.0, 7.0, 6.0, 5.0]), None, None

        def compute_density_kNN(self, k: int) -> None:
            calls.append(("density", (k, self.intrinsic_dim)))

        def compute_clustering_ADP(self, Z: float, halo: bool) -> np.ndarray:
            calls.append(("adp", (Z, halo)))
            self.N_clusters = 2
            return modality.copy()

    fake = type(sys)("dadapy.data")
    fake.Data = FakeData  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dadapy", type(sys)("dadapy"))
    monkeypatch.setitem(sys.modules, "dadapy.data", fake)
    score = cluster_homogeneity(x, modality, method="adp")
    assert calls == [
        ("init", 59),  # maxk=128 capped at n - 1
        ("gride", 59),
        ("density", (16, 6.0)),  # the Gride estimate at the fourth scale
        ("adp", (1.65, False)),
    ]
    assert (score.method, score.n_clusters, score.noise_fraction) == ("adp", 2, 0.0)
    assert score.homogeneity == 1.0


@pytest.mark.bad_input_types
def test_cluster_homogeneity_bad_inputs() -> None:
    x = two_modalities(True)
    with pytest.raises(ValueError, match="160 rows but modality_labels has 3"):
        cluster_homogeneity(x, [0, 1, 0])
    with pytest.raises(ValueError, match="method must be one of"):
        cluster_homogeneity(x, MODALITY, method="kmeans")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise must be one of"):
        cluster_homogeneity(x, MODALITY, noise="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"at least .* = 16 points; got 5.*lower min_cluster_size"):
        cluster_homogeneity(x[:5], MODALITY[:5])
    with pytest.raises(ValueError, match="one of each per point"):
        homogeneity_from_clusters([0, 1], [0, 1, 2])

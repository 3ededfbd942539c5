"""The two array-based analyses: neighbourhood overlap per layer and role, and the modality gap.

Each analysis is checked layer by layer against the metric it wraps and against brute force,
on synthetic activations whose answer is known (a "semantic" layer and a "noise" layer; a
"separated" layer and a "mixed" layer).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch

from vlm_lens.analysis.modality_gap import ModalityGapResult, modality_gap
from vlm_lens.analysis.neighbourhood_overlap import OverlapResult, neighbourhood_overlap
from vlm_lens.metrics.clustering import cluster_homogeneity
from vlm_lens.metrics.neighbourhood import neighbourhood_overlap as chi
from vlm_lens.metrics.neighbourhood import overlap_chance_level

LABELS = np.repeat(np.arange(4), 25)


def layered(seed: int = 0) -> torch.Tensor:
    """[3, 100, 16]: layer 0 noise, layer 1 weakly semantic, layer 2 strongly semantic."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 16, generator=g)
    lab = torch.from_numpy(LABELS)
    return torch.stack(
        [torch.randn(100, 16, generator=g) + s * centres[lab] for s in (0.0, 0.6, 8.0)]
    )


# ------------------------------------------------------------------ neighbourhood overlap


def test_overlap_per_layer_matches_metric_and_tracks_semantics() -> None:
    reps = layered()
    res = neighbourhood_overlap(reps, LABELS, k=10)
    assert isinstance(res, OverlapResult)
    assert res.roles == ("representation",)
    expected = [chi(reps[layer], LABELS, k=10) for layer in range(3)]
    np.testing.assert_array_equal(res.overlap["representation"], expected)
    values = res.overlap["representation"]
    assert values[2] == 1.0
    assert abs(values[0] - res.chance) < 0.1
    assert values[0] < values[1] < values[2]
    assert res.chance == pytest.approx(overlap_chance_level(LABELS))
    assert (res.k, res.n) == (10, 100)


def test_overlap_roles_from_mapping_and_frame() -> None:
    reps = layered()
    noise = torch.randn(2, 100, 8, generator=torch.Generator().manual_seed(1)).numpy()
    res = neighbourhood_overlap({"gate": reps, "image": noise}, LABELS, k=5)
    assert res.roles == ("gate", "image")
    assert res.overlap["image"].shape == (2,)
    frame = res.to_frame()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["layer", "role", "overlap", "chance"]
    assert len(frame) == 3 + 2
    gate = frame[frame.role == "gate"]
    assert gate.layer.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(gate.overlap.to_numpy(), res.overlap["gate"])
    assert (frame.chance == res.chance).all()
    only = neighbourhood_overlap({"gate": reps, "image": noise}, LABELS, k=5, role="image")
    assert only.roles == ("image",)
    np.testing.assert_array_equal(only.overlap["image"], res.overlap["image"])
    named = neighbourhood_overlap(reps.numpy(), LABELS, k=5, role="gate")
    np.testing.assert_array_equal(named.overlap["gate"], res.overlap["gate"])


@pytest.mark.bad_input_types
def test_overlap_analysis_bad_inputs() -> None:
    reps = layered()
    with pytest.raises(ValueError, match=r"\[layers, n, d\].*x\[None\]"):
        neighbourhood_overlap(reps[0], LABELS)
    with pytest.raises(ValueError, match="100 samples .* labels has 99"):
        neighbourhood_overlap(reps, LABELS[:99])
    with pytest.raises(ValueError, match=r"role 'text' is not among .*\['gate'\]"):
        neighbourhood_overlap({"gate": reps}, LABELS, role="text")
    with pytest.raises(ValueError, match=r"k=100 .*use k <= 99"):
        neighbourhood_overlap(reps, LABELS, k=100)
    with pytest.raises(ValueError, match="empty mapping"):
        neighbourhood_overlap({}, LABELS)


# ------------------------------------------------------------------ modality gap


def two_layer_modalities(n: int = 60, m: int = 50, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Layer 0: modalities mixed within three shared groups. Layer 1: modalities apart."""
    rng = np.random.default_rng(0)
    centres = 12 * np.eye(d)[:3]
    text_mixed = centres[rng.integers(0, 3, n)] + rng.normal(size=(n, d))
    image_mixed = centres[rng.integers(0, 3, m)] + rng.normal(size=(m, d))
    text_apart = rng.normal(size=(n, d)) + 12 * np.eye(d)[5]
    image_apart = rng.normal(size=(m, d)) + 12 * np.eye(d)[6]
    return np.stack([text_mixed, text_apart]), np.stack([image_mixed, image_apart])


def test_modality_gap_quartiles_match_brute_force() -> None:
    text, image = two_layer_modalities()
    res = modality_gap(torch.from_numpy(text), image, cluster=False)
    assert isinstance(res, ModalityGapResult)
    for layer in range(2):
        t = text[layer] / np.linalg.norm(text[layer], axis=1, keepdims=True)
        v = image[layer] / np.linalg.norm(image[layer], axis=1, keepdims=True)
        q1, med, q3 = np.quantile(np.abs(t @ v.T), (0.25, 0.5, 0.75))
        assert res.q1[layer] == pytest.approx(q1, abs=1e-12)
        assert res.median_abs_cos[layer] == pytest.approx(med, abs=1e-12)
        assert res.q3[layer] == pytest.approx(q3, abs=1e-12)
    # Apart (orthogonal means): every |cos| small. Mixed: a third of the pairs share a group,
    # so the upper quartile is near 1.
    assert res.q3[1] < 0.2
    assert res.q3[0] > 0.8
    assert np.isnan(res.homogeneity).all()
    assert res.n_clusters is None and res.noise_fraction is None and res.method is None
    frame = res.to_frame()
    assert list(frame.columns) == [
        "layer",
        "median_abs_cos",
        "q1",
        "q3",
        "homogeneity",
        "n_clusters",
        "noise_fraction",
        "reason",
    ]
    assert frame.n_clusters.isna().all() and frame.noise_fraction.isna().all()
    assert frame.reason.isna().all()


def test_modality_gap_homogeneity_per_layer() -> None:
    text, image = two_layer_modalities()
    res = modality_gap(text, image)
    assert res.method == "hdbscan"
    assert res.homogeneity[1] == 1.0
    assert res.homogeneity[0] < 0.1
    modality = np.repeat([0, 1], [60, 50])
    for layer in range(2):
        ref = cluster_homogeneity(np.vstack([text[layer], image[layer]]), modality)
        assert res.homogeneity[layer] == ref.homogeneity
        assert res.n_clusters is not None and res.n_clusters[layer] == ref.n_clusters
    frame = res.to_frame()
    assert frame.layer.tolist() == [0, 1]
    assert frame.n_clusters.tolist() == res.n_clusters.tolist()
    assert (res.n_text, res.n_image) == (60, 50)


def row_indices(pooled: np.ndarray, rows: np.ndarray) -> list[int]:
    """Where each of `rows` sits in `pooled`."""
    return [int(np.flatnonzero((pooled == row).all(axis=1))[0]) for row in rows]


def test_modality_gap_subsample_is_stratified_and_shared_across_layers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text, image = two_layer_modalities()
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def spy(x: torch.Tensor, modality: np.ndarray, *args: object, **kwargs: object) -> object:
        seen.append((x.numpy().copy(), np.asarray(modality).copy()))
        return cluster_homogeneity(x, modality, *args, **kwargs)  # type: ignore[arg-type]

    gap_module = sys.modules["vlm_lens.analysis.modality_gap"]  # the package exports the function
    monkeypatch.setattr(gap_module, "cluster_homogeneity", spy)
    full = modality_gap(text, image, cluster=False)
    res = modality_gap(text, image, max_cluster_points=44, seed=3)
    assert len(seen) == 2
    chosen = []
    for layer, (x, modality) in enumerate(seen):
        assert x.shape == (44, 16)
        assert (modality == 0).sum() == 24 and (modality == 1).sum() == 20  # 60:50 of 44
        rows = row_indices(np.vstack([text[layer], image[layer]]), x)
        assert all((r < 60) == (mod == 0) for r, mod in zip(rows, modality, strict=True))
        chosen.append(rows)
    assert chosen[0] == chosen[1]
    # The quartiles still use every pair.
    np.testing.assert_array_equal(res.median_abs_cos, full.median_abs_cos)
    # Same seed, same subsample; another seed, another one.
    seen.clear()
    modality_gap(text, image, max_cluster_points=44, seed=3)
    assert row_indices(np.vstack([text[0], image[0]]), seen[0][0]) == chosen[0]
    seen.clear()
    modality_gap(text, image, max_cluster_points=44, seed=4)
    assert row_indices(np.vstack([text[0], image[0]]), seen[0][0]) != chosen[0]


def test_modality_gap_bad_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    text, image = two_layer_modalities()
    with pytest.raises(ValueError, match=r"same layers and width.*\[layers, n, d\]"):
        modality_gap(text[:1], image, cluster=False)
    with pytest.raises(ValueError, match="same layers and width"):
        modality_gap(text, image[..., :8], cluster=False)
    with pytest.raises(ValueError, match=r"text must be \[layers, n, d\].*x\[None\]"):
        modality_gap(text[0], image, cluster=False)
    with pytest.raises(ValueError, match="max_cluster_points must be at least 2"):
        modality_gap(text, image, max_cluster_points=1)
    monkeypatch.setitem(sys.modules, "dadapy", None)
    monkeypatch.setitem(sys.modules, "dadapy.data", None)
    with pytest.raises(ImportError, match=r"dadapy 0.3.4 requires numpy<2"):
        modality_gap(text, image, method="adp")

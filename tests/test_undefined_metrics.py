"""Undefined cluster homogeneity (NaN with a reason, never 0), the uninformative-input warnings,
and how the report's figures show them (gaps, notes), plus the figures' readability fixes: the
gate's share on its own scale, "no flips" written out, the knockout table drawn once.

Expectations are derived: sklearn's own HDBSCAN and ``homogeneity_score`` on the same points,
and the figures' traces compared with the results they were drawn from.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
from sklearn.cluster import HDBSCAN
from sklearn.metrics import homogeneity_score

from vlm_lens.analysis import (
    AttentionShareResult,
    KnockoutResult,
    ModalityGapResult,
    PatchingSweepResult,
    modality_gap,
)
from vlm_lens.errors import UninformativeMetricWarning
from vlm_lens.metrics import cluster_homogeneity, clustering_caveat, homogeneity_from_clusters
from vlm_lens.report.html import gap_table
from vlm_lens.viz import (
    attention_share_figure,
    knockout_figure,
    modality_gap_figure,
    patching_figure,
)


def _sphere(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_one_cluster_is_undefined_not_zero() -> None:
    modality = np.array([0, 0, 1, 1, 0, 1])
    one = np.zeros(6, dtype=int)
    assert homogeneity_score(modality, one) == 0.0  # what used to be reported
    score = homogeneity_from_clusters(modality, one)
    assert np.isnan(score.homogeneity) and score.n_clusters == 1
    assert score.reason is not None and "1 cluster" in score.reason
    # two clusters: defined, and sklearn's value
    two = np.array([0, 0, 1, 1, 0, 1])
    defined = homogeneity_from_clusters(modality, two)
    assert defined.reason is None
    assert defined.homogeneity == homogeneity_score(modality, two)


def test_single_modality_scored_is_undefined() -> None:
    score = homogeneity_from_clusters([0, 0, 0, 1], [0, 0, 1, -1])  # the 1 is noise, excluded
    assert np.isnan(score.homogeneity) and "single modality" in str(score.reason)


def test_hdbscan_all_noise_is_undefined_with_the_counts() -> None:
    x = _sphere(48, 32, seed=0)  # no density structure
    modality = np.repeat([0, 1], 24)
    raw = HDBSCAN(min_cluster_size=8, min_samples=8, metric="cosine", copy=True).fit(x).labels_
    found = len(set(raw[raw >= 0].tolist()))
    assert found < 2  # the premise, from sklearn directly
    for noise in ("nearest", "exclude", "singleton"):
        score = cluster_homogeneity(x, modality, noise=noise, min_cluster_size=8, min_samples=8)
        assert np.isnan(score.homogeneity), noise
        assert score.n_clusters == found
        assert score.noise_fraction == pytest.approx((raw < 0).mean())
        assert str(score.reason).startswith("HDBSCAN found")


def test_adp_single_cluster_is_undefined(monkeypatch: pytest.MonkeyPatch) -> None:
    clustering = sys.modules["vlm_lens.metrics.clustering"]
    monkeypatch.setattr(clustering, "_adp_labels", lambda unit, *a: (np.zeros(len(unit), int), 1))
    score = cluster_homogeneity(_sphere(40, 8, 1), np.repeat([0, 1], 20), method="adp")
    assert np.isnan(score.homogeneity) and score.n_clusters == 1
    assert str(score.reason).startswith("ADP found 1 cluster")


def test_small_modality_warns() -> None:
    x = _sphere(40, 8, 2)
    modality = np.array([0] * 35 + [1] * 5)
    assert clustering_caveat(modality, 16) is not None
    assert clustering_caveat(np.repeat([0, 1], 20), 16) is None
    with pytest.warns(UninformativeMetricWarning, match="modality 1 has 5 points"):
        cluster_homogeneity(x, modality, min_cluster_size=16, min_samples=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UninformativeMetricWarning)
        cluster_homogeneity(x, modality, min_cluster_size=4, min_samples=4)  # 5 >= 4: silent


def test_modality_gap_keeps_reasons_counts_and_warns_once() -> None:
    noise = np.stack([_sphere(24, 32, 3), _sphere(24, 32, 4)])
    text = noise.copy()
    image = np.stack([_sphere(24, 32, 5), _sphere(24, 32, 6)])
    # layer 1: two far-apart modalities, so clusters are found there
    text[1] = _sphere(24, 32, 7) * 0.05 + np.eye(32)[0]
    image[1] = _sphere(24, 32, 8) * 0.05 + np.eye(32)[1]
    res = modality_gap(text, image, min_cluster_size=8, min_samples=8)
    modality = np.repeat([0, 1], 24)
    for layer in range(2):
        ref = cluster_homogeneity(
            np.vstack([text[layer], image[layer]]), modality, min_cluster_size=8, min_samples=8
        )
        assert res.n_clusters is not None and res.noise_fraction is not None
        assert res.n_clusters[layer] == ref.n_clusters
        assert res.noise_fraction[layer] == ref.noise_fraction
        assert res.reasons is not None and res.reasons[layer] == ref.reason
        np.testing.assert_equal(res.homogeneity[layer], ref.homogeneity)
    assert res.reasons is not None and res.reasons[0] is not None and res.reasons[1] is None
    frame = res.to_frame()
    assert frame.reason.tolist() == list(res.reasons)
    assert frame.noise_fraction.tolist() == res.noise_fraction.tolist()
    assert gap_table(res).homogeneity.tolist()[0] == "undefined"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = modality_gap(text, image[:, :5], min_cluster_size=8, min_samples=8)
    assert sum(issubclass(w.category, UninformativeMetricWarning) for w in caught) == 1
    assert small.warning is not None and "5 points" in small.warning


def _gap(homogeneity: list[float], reasons: tuple[str | None, ...]) -> ModalityGapResult:
    q = np.linspace(0.1, 0.2, len(homogeneity))
    clusters = np.array([0 if r else 2 for r in reasons])
    noise = np.array([1.0 if r else 0.1 for r in reasons])
    return ModalityGapResult(
        q, q - 0.05, q + 0.05, np.array(homogeneity), clusters, noise, "hdbscan", 9, 9, reasons
    )


def test_gap_figure_leaves_undefined_layers_as_annotated_gaps() -> None:
    why = "HDBSCAN found no cluster (all 18 points are noise), so homogeneity is undefined"
    res = _gap([np.nan, np.nan, 0.8, np.nan], (why, why, None, why))
    fig = modality_gap_figure(res)
    (line,) = [t for t in fig.data if t.name == "homogeneity"]
    y = np.asarray(line.y, dtype=np.float64)
    assert np.isnan(y[[0, 1, 3]]).all() and y[2] == 0.8  # gaps, never 0
    assert line.connectgaps is False
    np.testing.assert_array_equal(np.asarray(line.customdata)[:, 0], res.n_clusters)
    spans = sorted((s.x0, s.x1) for s in fig.layout.shapes)
    assert spans == [(-0.5, 1.5), (2.5, 3.5)]  # layers 0-1 and 3 shaded
    notes = [
        a.text.replace("<br>", " ") for a in fig.layout.annotations if "undefined" in (a.text or "")
    ]
    assert len(notes) == 1
    assert "layers 0–1, 3" in notes[0] and "HDBSCAN found no cluster" in notes[0]
    clean = modality_gap_figure(_gap([0.9, 0.8], (None, None)))
    assert not clean.layout.shapes
    assert not [a for a in clean.layout.annotations if "undefined" in (a.text or "")]


def test_attention_share_gate_on_its_own_scale() -> None:
    share = np.array([[0.02, 0.97, 0.01], [0.03, 0.95, 0.02]])
    res = AttentionShareResult(
        (0, 1), ("gate", "image", "image_end"), share, share, share[None], None, 1
    )
    fig = attention_share_figure(res)
    bars = [t for t in fig.data if t.type == "bar"]
    lines = {t.name: t for t in fig.data if t.type == "scatter"}
    assert [b.name for b in bars] == ["gate", "image", "image_end"]
    assert set(lines) == {"gate", "image_end"}  # everything but the dominant "image"
    np.testing.assert_array_equal(np.asarray(lines["gate"].y), share[:, 0])
    assert lines["gate"].yaxis != bars[0].yaxis  # a separate, autoscaled panel
    assert fig.layout[lines["gate"].yaxis.replace("y", "yaxis")].range is None


def _sweep(flips: np.ndarray) -> PatchingSweepResult:
    layers = np.arange(len(flips))
    sim = np.full(len(flips), 0.004)
    ones = np.ones((len(flips), 12))
    return PatchingSweepResult("residual", layers, flips, sim, 0.0, 0.004, np.ones(12), ones, ones)


def test_patching_all_zero_flips_says_no_flips() -> None:
    fig = patching_figure(_sweep(np.zeros(4)))
    notes = [a.text for a in fig.layout.annotations if (a.text or "").startswith("no flips")]
    assert len(notes) == 1 and "12 pairs" in notes[0]
    some = patching_figure(_sweep(np.array([0.0, 0.25, 0.0, 0.0])))
    assert not [a for a in some.layout.annotations if (a.text or "").startswith("no flips")]


def test_knockout_without_table_draws_only_bars() -> None:
    res = KnockoutResult(
        ("baseline", "gate"), np.array([1.0, 0.5]), np.array([1.0, 0.6]), None, "",
        np.zeros((2, 4), dtype=np.int64), 4,
    )  # fmt: skip
    assert [t.type for t in knockout_figure(res).data].count("table") == 1
    bars_only = knockout_figure(res, table=False)
    assert [t.type for t in bars_only.data] == ["bar", "bar"]
    np.testing.assert_array_equal(np.asarray(bars_only.data[0].y), res.agreement)


def test_report_page_shows_warnings_undefined_layers_and_one_knockout_table() -> None:
    from vlm_lens.analysis import OverlapResult
    from vlm_lens.experiments.narrow_gate import ModelRun
    from vlm_lens.metrics import overlap_caveat
    from vlm_lens.report.html import render_html

    share = np.array([[0.02, 0.98], [0.03, 0.97]])
    shares = AttentionShareResult((0, 1), ("gate", "image"), share, share, share[None], None, 1)
    knockout = KnockoutResult(
        ("baseline", "gate"), np.array([1.0, 0.5]), np.array([1.0, 0.6]), None, "",
        np.zeros((2, 4), dtype=np.int64), 4,
    )  # fmt: skip
    labels = ["a"] * 6 + ["b"] * 2
    caveat = overlap_caveat(labels, k=3)
    assert caveat is not None
    overlap = OverlapResult({"gate": np.array([0.5, 0.6])}, 0.3, 3, 8, "class", caveat)
    why = "HDBSCAN found no cluster (all 18 points are noise), so homogeneity is undefined"
    gap = _gap([np.nan, 0.7], (why, None))
    run = ModelRun("m1", "tiny", {}, "<image>x", 8, shares, knockout, overlap=overlap, gap=gap)
    page = render_html([run], None, {"title": "t"})
    assert page.count("class='warning'") == 1
    assert "χ is uninformative: the smallest class, &#x27;b&#x27;, has 2 samples" in page
    assert page.count("<h3>m1</h3><table") == 1  # the knockout table, as HTML, once
    # and not again inside the figure: its traces (the first argument after the div id)
    call = page.index('"fig-knockout",', page.index("Plotly.newPlot"))
    traces, _ = json.JSONDecoder().raw_decode(page[call + len('"fig-knockout",') :].lstrip())
    assert [t["type"] for t in traces] == ["bar", "bar"]
    assert "<td>undefined</td>" in page and "homogeneity undefined at layer 0" in page

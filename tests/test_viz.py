"""Figures built from real result objects: trace data equal the results' numbers; the image
heatmap equals attention computed from the HF reference's ``output_attentions``; side-by-sides
have one column per model and each legend entry once; knockout_effect against direct formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from tests.conftest import Wrapped, wrap
from vlm_lens.analysis import (
    AttentionShareResult,
    KnockoutResult,
    ModalityGapResult,
    OverlapResult,
    PatchingSweepResult,
    PatchPair,
    attention_share,
    knockout_effect,
    modality_gap,
    neighbourhood_overlap,
    patching_sweep,
    representations,
)
from vlm_lens.interventions import gate_knockout, image_to_text_knockout
from vlm_lens.positions import after
from vlm_lens.testing import sample_image
from vlm_lens.viz import (
    attention_share_figure,
    image_attention_figure,
    knockout_figure,
    knockout_table,
    modality_gap_figure,
    overlap_figure,
    patch_grid,
    patching_figure,
)

N = 6


@dataclass
class Results:
    share: AttentionShareResult
    overlap: OverlapResult
    gap: ModalityGapResult
    knockout: KnockoutResult
    patching: PatchingSweepResult


def _results(w: Wrapped) -> Results:
    size = w.tiny.image_size
    images = [sample_image(seed=s, size=size) for s in range(N)]
    batch = w.model.prepare(images=images, text=[w.tiny.prompt] * N)
    labels = [s % 2 for s in range(N)]
    reps = {
        "gate": representations(w.model, batch, positions="gate"),
        "image_mean": representations(w.model, batch, positions="image", reduce="mean"),
    }
    text = representations(w.model, batch, positions=after("text", "gate"), reduce="random")
    image = representations(w.model, batch, positions="image", reduce="random")
    one = w.model.prepare(images=images[:2], text=[w.tiny.prompt] * 2)
    other = w.model.prepare(images=images[2:4], text=[w.tiny.prompt] * 2)
    return Results(
        share=attention_share(w.model, batch),
        overlap=neighbourhood_overlap(reps, labels, k=2),
        gap=modality_gap(text, image, min_cluster_size=2, min_samples=2),
        knockout=knockout_effect(w.model, batch, targets=[5] * N),
        patching=patching_sweep(w.model, PatchPair(one, other, 5, 6)),
    )


@pytest.fixture(scope="module")
def chameleon() -> Wrapped:
    return wrap("chameleon")


@pytest.fixture(scope="module")
def results(chameleon: Wrapped) -> Results:
    return _results(chameleon)


@pytest.fixture(scope="module")
def llava_results() -> Results:
    return _results(wrap("llava"))


def _traces(fig: go.Figure, kind: str | None = None) -> list:
    return [t for t in fig.data if kind is None or t.type == kind]


def test_attention_share_bars_are_the_shares(results: Results) -> None:
    res = results.share
    fig = attention_share_figure(res, drop_empty=False)
    bars = _traces(fig, "bar")
    assert [b.name for b in bars] == list(res.groups)
    for g, bar in enumerate(bars):
        np.testing.assert_array_equal(np.asarray(bar.y), res.share[:, g])
        np.testing.assert_array_equal(np.asarray(bar.x), np.asarray(res.layers))
    assert fig.layout.barmode == "stack"
    shown = [b.name for b in _traces(attention_share_figure(res), "bar")]
    assert shown == [g for i, g in enumerate(res.groups) if np.any(res.share[:, i] > 0)]


def test_overlap_lines_and_chance(results: Results) -> None:
    res = results.overlap
    fig = overlap_figure(res)
    lines = {t.name: t for t in fig.data}
    for role, values in res.overlap.items():
        np.testing.assert_array_equal(np.asarray(lines[role].y), values)
    assert set(np.asarray(lines["chance"].y).tolist()) == {res.chance}


def test_modality_gap_band_median_homogeneity(results: Results) -> None:
    res = results.gap
    fig = modality_gap_figure(res)
    band_low, band_high, median, homogeneity = fig.data
    np.testing.assert_array_equal(np.asarray(band_low.y), res.q1)
    np.testing.assert_array_equal(np.asarray(band_high.y), res.q3)
    assert band_high.fill == "tonexty"
    np.testing.assert_array_equal(np.asarray(median.y), res.median_abs_cos)
    np.testing.assert_array_equal(np.asarray(homogeneity.y), res.homogeneity)
    assert homogeneity.yaxis != median.yaxis  # second row


def test_knockout_table_and_bars(results: Results) -> None:
    res = results.knockout
    fig = knockout_figure(res)
    (table,) = _traces(fig, "table")
    frame = knockout_table(res)
    assert list(table.header.values) == list(frame.columns)
    assert list(table.cells.values[0]) == list(res.conditions)
    bars = {b.name: np.asarray(b.y) for b in _traces(fig, "bar")}
    np.testing.assert_array_equal(bars["agreement with baseline"], res.agreement)
    np.testing.assert_array_equal(bars["similarity to baseline"], res.similarity)
    assert res.accuracy is not None
    np.testing.assert_array_equal(bars["accuracy"], res.accuracy)


def test_patching_lines_and_baselines(results: Results) -> None:
    res = results.patching
    lines = {t.name: np.asarray(t.y) for t in patching_figure(res).data}
    np.testing.assert_array_equal(lines["flip rate"], res.flip_rate)
    np.testing.assert_array_equal(lines["similarity"], res.similarity)
    assert set(lines["flip rate, unpatched"].tolist()) == {res.baseline_flip_rate}
    assert set(lines["similarity, unpatched"].tolist()) == {res.baseline_similarity}


def test_side_by_side_one_column_per_model(results: Results, llava_results: Results) -> None:
    pairs = {
        attention_share_figure: "share",
        overlap_figure: "overlap",
        modality_gap_figure: "gap",
        knockout_figure: "knockout",
        patching_figure: "patching",
    }
    for make, field in pairs.items():
        single = make(getattr(results, field))
        both = make(
            {"native": getattr(results, field), "non-native": getattr(llava_results, field)}
        )
        assert len(both.data) == len(single.data) + len(make(getattr(llava_results, field)).data)
        titles = [a.text for a in both.layout.annotations]
        assert any(t.startswith("native") for t in titles), make.__name__
        assert any(t.startswith("non-native") for t in titles), make.__name__
        legend = [t.name for t in both.data if t.type != "table" and t.showlegend is not False]
        assert len(legend) == len(set(legend)), make.__name__
        right = [t for t in both.data if t.type != "table" and t.xaxis not in (None, "x")]
        assert right, make.__name__  # the second model sits on other axes


def _expected_token_shares(w: Wrapped, batch, layer: int) -> np.ndarray:
    """Per image token of the one prompt: its share of the text's attention to the image side,
    from the HF reference's output_attentions (heads summed, text query rows averaged)."""
    with torch.no_grad():
        att = w.reference(**batch.inputs, output_attentions=True).attentions[layer][0]
    layout = batch.layout
    n = batch.input_ids.shape[1]
    roles = [layout.roles_at(0, p) for p in range(n)]
    image_of = layout.image_index[0].tolist()
    gate = max(p for p in range(n) if "gate" in roles[p])
    queries = [p for p in range(n) if "text" in roles[p] and p > gate]
    keys = [p for p in range(n) if image_of[p] >= 0 and "image_start" not in roles[p]]
    tokens = [p for p in keys if "image" in roles[p]]
    a = att.double().sum(dim=0)[queries].mean(dim=0)  # [k]
    return (a[tokens] / a[keys].sum()).numpy()


@pytest.mark.parametrize("family", ["chameleon", "emu3"])
def test_image_heatmap_equals_output_attentions(family: str, request) -> None:
    w = request.getfixturevalue("chameleon") if family == "chameleon" else wrap(family)
    image = sample_image(seed=1, size=w.tiny.image_size)
    batch = w.model.prepare(images=image, text=w.tiny.prompt)
    layer = w.model.cfg.n_layers - 1
    grid = batch.layout.spans[0][0].grid
    fig = image_attention_figure(
        attention_share(w.model, batch), layer=layer, image=image, grid=grid
    )
    picture, heat = fig.data
    assert picture.type == "image" and heat.type == "heatmap"
    expected = _expected_token_shares(w, batch, layer)
    rows, cols = patch_grid(expected.size, grid)
    np.testing.assert_allclose(np.asarray(heat.z), expected.reshape(rows, cols), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(picture.z), np.asarray(image))
    height, width = np.asarray(image).shape[:2]
    assert np.asarray(heat.x).max() < width and np.asarray(heat.y).max() < height


def test_heatmap_side_by_side_and_bad_grid(results: Results) -> None:
    share = results.share
    fig = image_attention_figure({"a": share, "b": share}, layer=0)
    heats = _traces(fig, "heatmap")
    assert len(heats) == 2 and heats[0].colorbar.x < heats[1].colorbar.x  # a scale each
    np.testing.assert_array_equal(np.asarray(heats[0].z).reshape(-1), share.per_token[0])
    with pytest.raises(ValueError, match="grid=\\(rows, cols\\)"):
        image_attention_figure(np.ones(6) / 6)
    with pytest.raises(ValueError, match="holds 8 tokens"):
        image_attention_figure(np.ones(6) / 6, grid=(2, 4))


def test_knockout_effect_against_direct_formulas(chameleon: Wrapped) -> None:
    w = chameleon
    images = [sample_image(seed=s, size=w.tiny.image_size) for s in range(3)]
    batch = w.model.prepare(images=images, text=[w.tiny.prompt] * 3)
    conditions = {"gate": gate_knockout, "image->text": image_to_text_knockout}
    res = knockout_effect(w.model, batch, conditions, targets=[7, 7, 7])
    last = batch.layout.mask("last")
    with torch.no_grad():
        base = w.reference(**batch.inputs).logits[last].double()
        knocked = [
            w.model.run_with_hooks(batch, fwd_hooks=build(batch))[last].double()
            for build in conditions.values()
        ]
    p = base.softmax(-1)
    for i, logits in enumerate([base, *knocked]):
        q = logits.softmax(-1)
        assert res.agreement[i] == (logits.argmax(-1) == base.argmax(-1)).double().mean().item()
        assert res.similarity[i] == pytest.approx(torch.minimum(p, q).sum(-1).mean().item())
        assert res.accuracy[i] == (logits.argmax(-1) == 7).double().mean().item()
    assert res.conditions == ("baseline", "gate", "image->text")
    frame = res.with_accuracy({"baseline": 1.0, "gate": 0.5, "image->text": 0.0}, "x").to_frame()
    assert frame["accuracy"].tolist() == [1.0, 0.5, 0.0]

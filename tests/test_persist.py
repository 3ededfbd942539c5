"""Every result object saves and loads exactly (issue 16), and every figure builds from a loaded
result as from the original (``fig.to_dict()`` compared as JSON; arrays bit for bit, tensors
``torch.equal``); the ``meta`` of a result tells two runs apart."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.io
import pytest
import torch
from PIL import Image

from vlm_lens import HookedVLM, VLMInputError, hooks
from vlm_lens.analysis import (
    PatchPair,
    attention_share,
    find_sinks,
    knockout_effect,
    knockout_sweep,
    logit_lens,
    modality_gap,
    neighbourhood_overlap,
    patching_sweep,
    representations,
    run_sweep,
)
from vlm_lens.analysis.persist import load_meta, load_result, register_result, save_result
from vlm_lens.evaluate import EvaluationResult
from vlm_lens.experiments.gate_criteria import Criterion, GateMeasurement
from vlm_lens.experiments.narrow_gate import ModelRun
from vlm_lens.interventions import gate_knockout
from vlm_lens.testing import build_tiny, sample_image
from vlm_lens.viz import (
    attention_heads_view,
    attention_share_figure,
    image_attention_figure,
    knockout_figure,
    knockout_table,
    modality_gap_figure,
    overlap_figure,
    patching_figure,
)

FORMATS = [".json", ".safetensors"]


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    tiny = build_tiny("llava")
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    images = [sample_image(seed=s, size=tiny.image_size) for s in range(4)]
    batch = model.prepare(images=images, text=[tiny.prompt] * 4)
    return {"tiny": tiny, "model": model, "batch": batch, "images": images}


@pytest.fixture(scope="module")
def results(setup: dict[str, Any]) -> dict[str, Any]:
    model, batch = setup["model"], setup["batch"]
    half = model.prepare(images=setup["images"][:2], text=[setup["tiny"].prompt] * 2)
    other = model.prepare(images=setup["images"][2:], text=[setup["tiny"].prompt] * 2)
    x = representations(model, batch, positions="gate")
    text = representations(model, batch, positions="last")
    labels = ["a", "a", "b", "b"]
    return {
        "attention_share": attention_share(model, batch),
        "knockout": knockout_effect(model, batch, targets=[1, 2, 3, 4]),
        "knockout_sweep": knockout_sweep(model, batch, windows=[1, 2]),
        "patching": patching_sweep(model, PatchPair(half, other, 3, 4), layers=[0, 1]),
        "logit_lens": logit_lens(model, batch, positions="image", top_k=3, tokens=[5, 6]),
        "overlap": neighbourhood_overlap({"gate": x, "last": text}, labels, k=1),
        "gap": modality_gap(text, x, cluster=True, min_cluster_size=2, min_samples=1),
        "gap_unclustered": modality_gap(text, x, cluster=False),
        "sinks": find_sinks(model, batch, threshold=2.0),
        "representations": x,
        "sweep": run_sweep(model, batch, {"gate": gate_knockout(batch)}),
    }


def assert_same(a: Any, b: Any, where: str = "result") -> None:
    """Exact equality: same types, dtypes and shapes, NaN where NaN."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype} {b.dtype}"
        if a.dtype == object:
            assert a.tolist() == b.tolist(), where
        else:
            assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    elif isinstance(a, Image.Image):
        assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b)), where
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def roundtrip(value: Any, tmp_path: Path, suffix: str) -> Any:
    loaded = load_result(save_result(value, tmp_path / f"result{suffix}"))
    assert_same(value, loaded)
    return loaded


def figure_json(fig: Any) -> str:
    return json.dumps(fig.to_dict(), cls=plotly.utils.PlotlyJSONEncoder, sort_keys=True)


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize(
    "name",
    [
        "attention_share",
        "knockout",
        "knockout_sweep",
        "patching",
        "logit_lens",
        "overlap",
        "gap",
        "gap_unclustered",
        "sinks",
        "representations",
        "sweep",
    ],
)
def test_every_result_roundtrips_exactly(
    results: dict[str, Any], name: str, suffix: str, tmp_path: Path
) -> None:
    loaded = roundtrip(results[name], tmp_path, suffix)
    if hasattr(loaded, "to_frame"):
        pd.testing.assert_frame_equal(loaded.to_frame(), results[name].to_frame(), check_exact=True)


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_figure_builds_from_a_loaded_result(
    setup: dict[str, Any], results: dict[str, Any], suffix: str, tmp_path: Path
) -> None:
    def back(name: str) -> Any:
        return load_result(save_result(results[name], tmp_path / f"{name}{suffix}"))

    image = setup["images"][0]
    figures = {
        "attention_share": lambda r: attention_share_figure({"a": r, "b": r}),
        "knockout": knockout_figure,
        "patching": patching_figure,
        "overlap": overlap_figure,
        "gap": modality_gap_figure,
        "gap_unclustered": modality_gap_figure,
    }
    for name, build in figures.items():
        assert figure_json(build(back(name))) == figure_json(build(results[name])), name
    heat = back("attention_share")
    original = results["attention_share"]
    assert figure_json(image_attention_figure(heat, image=image)) == figure_json(
        image_attention_figure(original, image=image)
    )
    pd.testing.assert_frame_equal(
        knockout_table(back("knockout")), knockout_table(results["knockout"])
    )


def test_the_circuits_view_builds_from_saved_inputs(setup: dict[str, Any], tmp_path: Path) -> None:
    model, batch = setup["model"], setup["batch"]
    _, cache = model.run_with_cache(batch, names_filter=hooks.pattern(0))
    view = {
        "pattern": cache[hooks.pattern(0)][0],
        "layout": batch.layout,
        "tokens": model.to_str_tokens(batch),
    }
    loaded = roundtrip(view, tmp_path, ".safetensors")

    def html(v: dict[str, Any]) -> str:  # circuitsvis names each view with a random id
        src = attention_heads_view(v["pattern"], v["layout"], v["tokens"], layer=0).local_src
        return re.sub(r"circuits-vis-[\w-]+", "circuits-vis", src)

    assert html(loaded) == html(view)


def test_evaluate_and_experiment_results_roundtrip(
    results: dict[str, Any], setup: dict[str, Any], tmp_path: Path
) -> None:
    predictions = pd.DataFrame(
        {
            "id": ["q1", "q2"],
            "condition": ["baseline", "gate"],
            "draw": [0, 0],
            "prediction": ["a", None],
        }
    )
    evaluation = EvaluationResult(
        "vqav2", "m", "vqa_accuracy", 2, {"baseline": 1.0, "gate": float("nan")},
        draws={"random": [0.5, 0.25]}, descriptions={"gate": "no position reads the gate"},
        predictions=predictions,
    )  # fmt: skip
    loaded = roundtrip(evaluation, tmp_path, ".json")
    pd.testing.assert_frame_equal(loaded.predictions, predictions, check_exact=True)
    measurement = GateMeasurement(
        kinds=("colour",), counts={"colour": 10}, chance={"colour": 0.2},
        accuracy={"none": {"colour": 1.0}, "gate": {"colour": 0.2}, "image->text": {"colour": 0.9}},
        gate_share=(0.1, 0.4), flip_rate=None, baseline_flip_rate=None,
        n_pairs=0, pairs_reason="one answer only", n_scenes=10, measure_seed=0,
    )  # fmt: skip
    assert (
        load_result(save_result(measurement, tmp_path / "m.json")).has_gate == measurement.has_gate
    )
    roundtrip(measurement, tmp_path, ".json")
    roundtrip(Criterion("share", None, 0.2, None, "undefined: no pair"), tmp_path, ".json")
    run = ModelRun(
        name="tiny", family="llava", config={"n_layers": 2}, prompt=setup["tiny"].prompt,
        n_images=4, shares=results["attention_share"], knockout=results["knockout"],
        overlap=results["overlap"], gap=results["gap"], patching=results["patching"],
        heatmap=results["attention_share"], heatmap_image=setup["images"][0],
        heatmap_grid=(2, 2), view_html="<div>view</div>", skipped={"x": "why"},
        seconds={"attention_share": 0.5},
    )  # fmt: skip
    for suffix in FORMATS:
        roundtrip(run, tmp_path, suffix)


def test_meta_tells_two_runs_apart(setup: dict[str, Any], tmp_path: Path) -> None:
    model, batch, tiny = setup["model"], setup["batch"], setup["tiny"]
    first = attention_share(model, batch, layers=[0])
    other_inputs = model.prepare(images=setup["images"][::-1], text=[tiny.prompt] * 4)
    second = attention_share(model, other_inputs, layers=[0])
    reseeded = build_tiny("llava", seed=1)
    other_model = HookedVLM.from_hf(reseeded.model, reseeded.processor)
    third = attention_share(other_model, batch.to(other_model.device), layers=[0])
    metas = [
        load_meta(save_result(r, tmp_path / f"{i}.json"))
        for i, r in enumerate((first, second, third))
    ]
    assert metas[0]["analysis"] == "attention_share"
    assert metas[0]["settings"]["layers"] == [0]
    assert metas[0]["settings"]["queries"] == "text_after_gate"
    assert metas[0]["inputs"]["n_prompts"] == 4
    assert metas[0]["inputs"]["texts"] == [tiny.prompt] * 4
    assert metas[0]["model"]["family"] == "llava"
    assert metas[0]["inputs"]["digest"] != metas[1]["inputs"]["digest"]
    assert metas[0]["model"] == metas[1]["model"]
    assert metas[0]["model"]["weights_digest"] != metas[2]["model"]["weights_digest"]
    assert metas[0]["inputs"]["digest"] == metas[2]["inputs"]["digest"]
    assert load_result(tmp_path / "0.json").meta == first.meta
    extra = load_meta(save_result(first, tmp_path / "x.json", meta={"note": "run 1"}))
    assert extra["note"] == "run 1" and extra["analysis"] == "attention_share"


def test_bad_files_and_values_are_refused(results: dict[str, Any], tmp_path: Path) -> None:
    from vlm_lens.analysis import AttentionShareResult, KnockoutResult

    with pytest.raises(VLMInputError, match=r"writes .json or .safetensors files, got 'r.pkl'"):
        save_result(results["knockout"], tmp_path / "r.pkl")
    path = save_result(results["knockout"], tmp_path / "k.json")
    with pytest.raises(VLMInputError, match="holds a KnockoutResult, not a AttentionShareResult"):
        load_result(path, expect=AttentionShareResult)
    assert isinstance(load_result(path, expect=KnockoutResult), KnockoutResult)
    (tmp_path / "other.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(VLMInputError, match="is not a result written by save_result"):
        load_result(tmp_path / "other.json")
    with pytest.raises(VLMInputError, match="does not exist"):
        load_result(tmp_path / "missing.json")

    @dataclasses.dataclass
    class Unregistered:
        x: int

    with pytest.raises(VLMInputError, match="Unregistered is not a registered result"):
        save_result(Unregistered(1), tmp_path / "u.json")
    register_result(Unregistered)
    text = save_result(Unregistered(1), tmp_path / "u.json").read_text(encoding="utf-8")
    forged = text.replace("Unregistered", "Forged")
    (tmp_path / "f.json").write_text(forged, encoding="utf-8")
    with pytest.raises(VLMInputError, match="Forged, which is not a registered result"):
        load_result(tmp_path / "f.json")
    with pytest.raises(VLMInputError, match="cannot save a object"):
        save_result({"x": object()}, tmp_path / "o.json")


def test_an_evaluation_keeps_what_produced_it(setup: dict[str, Any], tmp_path: Path) -> None:
    from vlm_lens.evaluate import TASKS, evaluate
    from vlm_lens.evaluate.fixtures import write_vqav2

    items = TASKS["vqav2"].read(write_vqav2(tmp_path / "vqa", n_images=2))[:3]
    result = evaluate(setup["model"], "vqav2", items, "baseline,gate", progress=False, seed=3)
    loaded = roundtrip(result, tmp_path, ".json")
    assert loaded.meta["model"]["family"] == "llava"
    assert loaded.meta["model"] == attention_share(setup["model"], setup["batch"]).meta["model"]
    assert loaded.meta["settings"]["seed"] == 3
    assert loaded.meta["settings"]["n"] == len(items)
    assert list(loaded.meta["settings"]["conditions"]) == ["baseline", "gate"]

"""Every analysis and the ``vlm-lens narrow-gate`` report run on each registered family's tiny
model (its primary variant), loaded from a saved folder the way a user loads a checkpoint.

The contract suite pins each intervention against Hugging Face; here the point is coverage:
no analysis may be unavailable, crash or silently skip on a family. Each result is checked for
what it must hold on any model (shapes, one value per layer, finite numbers, probabilities that
sum to one), not for typed-in values.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import PRIMARY
from vlm_lens import HookedVLM, analysis
from vlm_lens.cli import main
from vlm_lens.interventions import ablate_image_tokens, gate_knockout, steer
from vlm_lens.testing import TinyVariant, sample_image, save_tiny
from vlm_lens.world import world_split

IDS = [v.name for v in PRIMARY]


@pytest.fixture(scope="module", params=PRIMARY, ids=IDS)
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    variant: TinyVariant = request.param
    return save_tiny(variant.build(), tmp_path_factory.mktemp(variant.name) / "model")


@pytest.fixture(scope="module")
def loaded(saved: Path) -> HookedVLM:
    return HookedVLM.from_pretrained(str(saved), attn_implementation="eager")


def _batch(model: HookedVLM, n: int = 2, seed: int = 0) -> Any:
    images = [sample_image(seed=seed + i, size=(24, 24)) for i in range(n)]
    texts = [f"{model.image_placeholder}What is it? Say{' more' * i}" for i in range(n)]
    return model.prepare(images=images, text=texts)


def test_every_analysis_runs(loaded: HookedVLM) -> None:
    model, batch = loaded, _batch(loaded)
    n_layers = model.cfg.n_layers
    shares = analysis.attention_share(model, batch)
    assert shares.to_frame() is not None
    lens = analysis.logit_lens(model, batch, positions="gate")
    assert lens.to_frame() is not None
    sinks = analysis.find_sinks(model, batch)
    assert sinks.to_frame() is not None
    knock = analysis.knockout_effect(model, batch)
    assert knock.to_frame() is not None
    sweep = analysis.knockout_sweep(model, batch, windows=[1, n_layers])
    assert sweep.to_frame() is not None
    reps = analysis.representations(model, batch, positions="gate")
    assert reps is not None
    other = _batch(model, seed=5)
    pair = analysis.PatchPair(other, batch, source_token=65, target_token=66)
    patching = analysis.patching_sweep(model, [pair])
    assert patching.to_frame() is not None
    with torch.no_grad():
        clean = model(batch)
        ablated = model.run_with_hooks(batch, fwd_hooks=ablate_image_tokens(batch))
        vector = torch.ones(model.cfg.d_model)
        steered = model.run_with_hooks(batch, fwd_hooks=steer(batch, vector, layers=0))
        knocked = model.run_with_hooks(batch, fwd_hooks=gate_knockout(batch))
    for logits in (ablated, steered, knocked):
        assert logits.shape == clean.shape and torch.isfinite(logits).any()
        assert not torch.equal(logits, clean)


def test_narrow_gate_report_runs(saved: Path, tmp_path: Path) -> None:
    html, numbers = tmp_path / "report.html", tmp_path / "report.json"
    args = ["narrow-gate", "--model", str(saved), "--n-images", "6", "--n-pairs", "2"]
    args += ["--k", "2", "--out", str(html), "--json", str(numbers), "-q", "--threads", "1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["vlm-lens", *args])
        threads = torch.get_num_threads()
        try:
            code = main(args)
        finally:
            torch.set_num_threads(threads)
    assert code == 0
    (run,) = json.loads(numbers.read_text(encoding="utf-8"))["models"]
    assert html.read_text(encoding="utf-8").lower().startswith("<!doctype html>")
    for key in ("attention_share", "knockout", "overlap", "modality_gap"):
        assert run[key] is not None, (key, run["skipped"])
    # The tiny byte-level tokenizers write every colour name with the same first token (the
    # space), so the report finds no two classes to patch; `patching_sweep` itself runs above.
    allowed = {"patching"}
    if not _has_grid(saved):  # a tiled image (InternVL): no one grid to draw the map on
        allowed.add("heatmap")
        assert "grid" in run["skipped"]["heatmap"], run["skipped"]
    else:
        assert run["heatmap"] is not None, run["skipped"]
    assert set(run["skipped"]) <= allowed, run["skipped"]


def _has_grid(saved: Path) -> bool:
    """Whether the report's image (a world scene) gives a square or row-marked span."""
    model = HookedVLM.from_pretrained(saved)
    scene = world_split("test", 1, seed=0, max_objects=1)[0]
    batch = model.prepare(images=scene.image, text=f"{model.image_placeholder} What?")
    span = batch.layout.spans[0][0]
    n = int(batch.layout.mask("image")[0].sum())
    return span.grid is not None or math.isqrt(n) ** 2 == n

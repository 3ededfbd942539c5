"""Arguments that used to run on silently (issue 16) now raise `VLMInputError` naming the
problem and the fix, before or at the hook; no hook outlives the error."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from vlm_lens import HookedVLM, VLMInputError, hooks
from vlm_lens.analysis.knockout_effect import knockout_effect
from vlm_lens.analysis.patching_sweep import PatchPair, patching_sweep
from vlm_lens.interventions import knockout, random_image_knockout, steer
from vlm_lens.testing import build_tiny, sample_image


@pytest.fixture(scope="module")
def model_and_batch() -> tuple[HookedVLM, Any]:
    tiny = build_tiny("llava")
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    images = [sample_image(seed=i, size=tiny.image_size) for i in range(2)]
    batch = model.prepare(images=images, text=[tiny.prompt, tiny.prompt + " more"])
    return model, batch


def _no_hooks_left(model: HookedVLM) -> bool:
    return not any(
        hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks or hp._backward_hooks
        for hp in model.hook_dict.values()
    )


@pytest.mark.bad_input_types
@pytest.mark.parametrize("vector", [torch.tensor(2.0), torch.tensor([2.0])], ids=["0d", "1"])
def test_steering_vector_must_be_d_model(model_and_batch: Any, vector: torch.Tensor) -> None:
    model, batch = model_and_batch
    d_model = model.cfg.d_model
    if vector.ndim == 0:
        with pytest.raises(VLMInputError, match=r"one \[d_model\] tensor.*torch.ones\(d_model\)"):
            steer(batch, vector, layers=0)
        return
    hooks_ = steer(batch, vector, layers=0)  # [1]: only the model knows d_model
    with pytest.raises(VLMInputError, match=f"1 dimensions but the site holds {d_model}"):
        model.run_with_hooks(batch, fwd_hooks=hooks_)
    assert _no_hooks_left(model)


def test_negative_k_is_refused(model_and_batch: Any) -> None:
    _, batch = model_and_batch
    with pytest.raises(ValueError, match="k must be a whole number of image tokens >= 0"):
        random_image_knockout(batch, k=-1)


def test_heads_past_the_layer_are_refused(model_and_batch: Any) -> None:
    model, batch = model_and_batch
    n_heads = model.cfg.n_heads
    ko = knockout(batch, queries="text", keys="image", layers=0, heads=99, mode="zero")
    with pytest.raises(VLMInputError, match=rf"heads \[99\] do not exist; .*{n_heads} heads"):
        model.run_with_hooks(batch, fwd_hooks=ko)
    assert _no_hooks_left(model)
    last = knockout(batch, queries="text", keys="image", layers=0, heads=n_heads - 1, mode="zero")
    with torch.no_grad():
        model.run_with_hooks(batch, fwd_hooks=last)  # the last head exists


@pytest.mark.parametrize("where", ["source_token", "target_token"])
@pytest.mark.parametrize("bad", [-1, 10**6])
def test_patch_pair_token_outside_the_vocabulary(
    model_and_batch: Any, where: str, bad: int
) -> None:
    model, batch = model_and_batch
    tokens = {"source_token": 1, "target_token": 2, where: bad}
    pair = PatchPair(batch, batch, **tokens)
    with pytest.raises(VLMInputError, match=rf"PatchPair.{where} holds token id\(s\) \[{bad}\]"):
        patching_sweep(model, pair, layers=[0])


def test_knockout_targets_outside_the_vocabulary_fail_before_running(
    model_and_batch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, batch = model_and_batch
    calls = []
    monkeypatch.setattr(model, "run_with_hooks", lambda *a, **k: calls.append(1))
    with pytest.raises(VLMInputError, match=r"targets holds token id\(s\) \[1000000\]"):
        knockout_effect(model, batch, targets=[1, 10**6])
    assert calls == []


@pytest.mark.parametrize("how", ["run_with_hooks", "hooks-context", "generate"])
def test_a_hook_returning_another_shape_raises_at_the_hook(model_and_batch: Any, how: str) -> None:
    model, batch = model_and_batch
    name = hooks.resid_pre(1)
    fwd = [(name, lambda tensor, hook: tensor[:1])]  # drops a sequence
    with (
        pytest.raises(VLMInputError, match=rf"{name}: a hook returned shape \(1, "),
        torch.no_grad(),
    ):
        if how == "run_with_hooks":
            model.run_with_hooks(batch, fwd_hooks=fwd)
        elif how == "hooks-context":
            with model.hooks(fwd_hooks=fwd):
                model(batch)
        else:
            model.generate(batch, max_new_tokens=2, fwd_hooks=fwd)
    assert _no_hooks_left(model)
    same = [(name, lambda tensor, hook: tensor * 1.0)]
    with torch.no_grad():
        assert torch.equal(model.run_with_hooks(batch, fwd_hooks=same), model(batch))

"""Runs stacked along the batch (`vlm_lens.engine.row_stack`, `vlm_lens.evaluate.stacking`).

The reference for every stacked result is the plain path, one call per run
(``stack_runs=False``), which the other tests check against Hugging Face. Greedy tokens must be
equal token for token. χ^out's residuals must agree to 1e-5: a layer runs one attention path
for all rows of a call, so in ``mode="zero"`` the baseline's rows, stacked with knockout rows,
run TransformerLens' eager reconstruction instead of SDPA (measured on the native organism:
the baseline differs from its own pass by ~5e-6, every knockout run is bit-equal, and in
``mode="mask"`` all runs are bit-equal); the kernels' blocking may also depend on the rows.
"""

from __future__ import annotations

import pytest
import torch

from vlm_lens import HookedVLM
from vlm_lens.engine.intervention import Intervention
from vlm_lens.engine.row_stack import stack_hooks, stackable, tile_batch
from vlm_lens.evaluate import EvalItem, evaluate
from vlm_lens.evaluate.conditions import ConditionContext, item_seed, parse_conditions
from vlm_lens.evaluate.generation import generate_runs, last_residuals
from vlm_lens.evaluate.stacking import plan_calls
from vlm_lens.interventions import gate_knockout
from vlm_lens.testing import build_tiny, sample_image
from vlm_lens.world import world_split
from vlm_lens.zoo.tasks import question_prompt

TOL = 1e-5
FAMILIES = ("chameleon", "llava", "qwen2_vl")  # early fusion; projector; multi-axis positions


@pytest.fixture(scope="module")
def organisms() -> dict[str, HookedVLM]:
    torch.set_num_threads(1)
    return {n: HookedVLM.from_pretrained(f"organism:{n}") for n in ("native", "nonnative")}


def _organism_batch(model: HookedVLM, n: int = 3):
    scenes = world_split("test", n, seed=1, max_objects=1)
    questions = [next(q for q in s.qa if q.kind == "colour").question for s in scenes]
    prompts = [question_prompt(q, model.image_placeholder) for q in questions]
    return model.prepare(images=[s.image for s in scenes], text=prompts, padding_side="left")


def _tiny(family: str):
    tiny = build_tiny(family)
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    images = [sample_image(seed=s, size=tiny.image_size) for s in range(2)]
    return model, model.prepare(images=images, text=[tiny.prompt] * 2)


def _runs(model: HookedVLM, batch, mode: str, draws: int = 2) -> dict:
    runs = {}
    for cond in parse_conditions("baseline,gate,image->text,random", mode):
        for d in range(draws if cond.name == "random" else 1):
            seeds = tuple(item_seed(42, d, f"i{i}") for i in range(len(batch)))
            name = cond.name if cond.name != "random" else f"random#{d}"
            runs[name] = cond.build(batch, ConditionContext(int(model.cfg.n_layers), d, seeds))
    return runs


def _check_generation(model: HookedVLM, batch, runs: dict, new: int) -> None:
    plain = generate_runs(model, batch, runs, max_new_tokens=new, stack_runs=False)
    stacked = generate_runs(model, batch, runs, max_new_tokens=new)
    for name in runs:
        assert torch.equal(stacked[name], plain[name]), name
    # the knockouts change something, so the comparison above can fail
    assert any(not torch.equal(plain[n], plain["baseline"]) for n in runs if n != "baseline")
    one_per_call = generate_runs(model, batch, runs, max_new_tokens=new, max_rows=1)
    assert all(torch.equal(one_per_call[n], plain[n]) for n in runs)


def _check_residuals(model: HookedVLM, batch, runs: dict) -> dict[str, bool]:
    plain = last_residuals(model, batch, runs, stack_runs=False)
    stacked = last_residuals(model, batch, runs)
    for name in runs:
        assert torch.allclose(stacked[name], plain[name], atol=TOL, rtol=TOL), name
    assert not torch.allclose(plain["gate"], plain["baseline"], atol=1e-3)
    return {name: torch.equal(stacked[name], plain[name]) for name in runs}


# ---------------------------------------------------------------------- equal to one call per run
@pytest.mark.parametrize("mode", ["zero", "mask"])
@pytest.mark.parametrize("which", ["native", "nonnative"])
def test_stacked_runs_equal_one_call_per_run_on_the_organisms(organisms, which, mode):
    model = organisms[which]
    batch = _organism_batch(model)
    runs = _runs(model, batch, mode)
    _check_generation(model, batch, runs, new=6)
    same = _check_residuals(model, batch, runs)
    assert all(same[n] for n in runs if n != "baseline"), same  # measured: bit-equal


@pytest.mark.parametrize("mode", ["zero", "mask"])
@pytest.mark.parametrize("family", FAMILIES)
def test_stacked_runs_equal_one_call_per_run_on_tiny_families(family, mode):
    model, batch = _tiny(family)
    runs = _runs(model, batch, mode)
    _check_generation(model, batch, runs, new=5)
    _check_residuals(model, batch, runs)


def test_evaluate_stacked_equals_plain_for_every_task_kind(organisms, tmp_path):
    model = organisms["nonnative"]
    scenes = world_split("test", 4, seed=3, max_objects=1)
    vqa = [
        EvalItem(f"q{s.index}", s.image, s.qa[0].question, (s.qa[0].answer,) * 10) for s in scenes
    ]
    captions = [EvalItem(f"c{s.index}", s.image, references=(s.caption,)) for s in scenes]
    chi = [EvalItem(f"k{s.index}", s.image, label=s.objects[0].shape) for s in scenes]
    for task, items in (("vqav2", vqa), ("coco-captions", captions), ("imagenet-chi", chi)):
        kwargs = {"model_name": "organism:nonnative", "batch_size": 2, "progress": False}
        if task == "imagenet-chi":
            kwargs["k"] = 1
        rows: dict[bool, list] = {True: [], False: []}
        for stack in (True, False):
            evaluate(model, task, items, stack_runs=stack, on_row=rows[stack].append, **kwargs)
        assert [(r["id"], r["run"]) for r in rows[True]] == [
            (r["id"], r["run"]) for r in rows[False]
        ]
        for a, b in zip(rows[True], rows[False], strict=True):
            if task == "imagenet-chi":
                assert torch.allclose(
                    torch.tensor(a["representation"]), torch.tensor(b["representation"]), atol=TOL
                )
            else:
                assert a["prediction"] == b["prediction"], (task, a, b)


# ---------------------------------------------------------------------- what stacks, what not
def test_a_user_condition_that_is_no_intervention_runs_alone(organisms):
    model = organisms["native"]
    batch = _organism_batch(model, 2)
    runs = _runs(model, batch, "zero", draws=1)
    bias = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 50

    def push(tensor, hook):  # noqa: ARG001
        return tensor + bias

    runs["mine"] = [("blocks.1.hook_resid_post", push)]  # a plain list
    names = list(model.hook_dict)
    assert not stackable(runs["mine"], names) and stackable(runs["gate"], names)
    alone = {n for n in runs if not stackable(runs[n], names)}
    calls = plan_calls(list(runs), {"baseline", "gate", "image->text"}, alone, width=8)
    assert [c.runs for c in calls] == [
        ("baseline", "gate", "image->text"),
        ("random#0",),
        ("mine",),
    ]
    plain = generate_runs(model, batch, runs, max_new_tokens=4, stack_runs=False)
    stacked = generate_runs(model, batch, runs, max_new_tokens=4)
    assert all(torch.equal(stacked[n], plain[n]) for n in runs)
    assert not torch.equal(plain["mine"], plain["baseline"])
    # an Intervention on the rotary tables (no batch axis) does not stack either
    rotary = Intervention([("blocks.0.attn.hook_cos", push)], torch.zeros(2, dtype=torch.long))
    assert not stackable(rotary, names)


def test_stacked_hooks_do_not_leak_after_an_exception(organisms):
    model = organisms["native"]
    batch = _organism_batch(model, 2)
    runs = _runs(model, batch, "zero", draws=1)

    def boom(tensor, hook):  # noqa: ARG001
        raise RuntimeError("boom")

    n = int(batch.input_ids.shape[1])
    runs["boom"] = Intervention([("blocks.2.hook_resid_post", boom)], torch.full((2,), n - 1))
    before = generate_runs(model, batch, {"gate": runs["gate"]}, max_new_tokens=3)
    for residuals in (False, True):
        with pytest.raises(RuntimeError, match="boom"):
            if residuals:
                last_residuals(model, batch, runs)
            else:
                generate_runs(model, batch, runs, max_new_tokens=3)
        assert not any(point.fwd_hooks for point in model.hook_dict.values())
    after = generate_runs(model, batch, {"gate": runs["gate"]}, max_new_tokens=3)
    assert torch.equal(before["gate"], after["gate"])


def test_a_stacked_hook_on_a_tensor_without_the_batch_axis_is_refused(organisms):
    model = organisms["native"]
    batch = _organism_batch(model, 2)
    hooks = stack_hooks([[("blocks.0.attn.hook_cos", lambda t, hook: t)]] * 2, len(batch))
    from vlm_lens.errors import VLMInputError

    with pytest.raises(VLMInputError, match="stack_runs=False"):
        model.run_with_hooks(tile_batch(batch, 2), fwd_hooks=hooks)
    assert not any(point.fwd_hooks for point in model.hook_dict.values())


def test_tile_batch_repeats_inputs_layout_and_prefix(organisms):
    model = organisms["native"]
    batch = _organism_batch(model, 2)
    tiled = tile_batch(batch, 3)
    assert len(tiled) == 6 and tiled.layout.shape == (6, batch.layout.shape[1])
    assert torch.equal(tiled.layout.mask("gate")[4], batch.layout.mask("gate")[0])
    ko = gate_knockout(batch, mode="zero")
    stacked = model.run_with_hooks(tiled, fwd_hooks=stack_hooks([[], ko, []], len(batch)))
    alone = model.run_with_hooks(batch, fwd_hooks=ko)
    assert torch.allclose(stacked[2:4], alone, atol=TOL)
    assert torch.allclose(stacked[4:], model(batch), atol=TOL)

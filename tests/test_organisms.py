"""The two built-in model organisms: offline loading, bit-exact parity with Hugging Face, held-out
accuracy above a threshold derived from the accuracy measured at training time, and a knockout
integration test (reading the image from after the image span is what makes them see)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

from vlm_lens import HookedVLM
from vlm_lens.interventions import knockout
from vlm_lens.positions import after
from vlm_lens.world import COLOURS, SHAPES, world_split
from vlm_lens.zoo.registry import ORGANISMS, organism_path
from vlm_lens.zoo.tasks import answer_accuracy, question_prompt

N_SCENES = 48
KINDS = ("colour", "shape")
CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES)}


@pytest.fixture(scope="module", params=sorted(ORGANISMS))
def organism(request: pytest.FixtureRequest) -> tuple[str, HookedVLM, dict]:
    name = request.param
    info = json.loads((organism_path(name) / "training.json").read_text())
    return name, HookedVLM.from_pretrained(f"organism:{name}"), info


@pytest.fixture(scope="module")
def scenes() -> list:
    return world_split("test", N_SCENES, seed=0, max_objects=1)


def _margin(p: float, n: int) -> float:
    """Three binomial standard deviations (at least one question)."""
    return 3 * math.sqrt(max(p * (1 - p), 1 / n) / n)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_loads_offline_and_is_bit_exact(organism, scenes, monkeypatch, implementation) -> None:
    """Logits equal those of the Hugging Face model loaded from the same folder, with the same
    attention implementation (SDPA, the default of `from_pretrained`, and eager)."""
    name, model, _ = organism
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = organism_path(name)
    hf = getattr(transformers, type(model.hf_model).__name__).from_pretrained(
        path, attn_implementation=implementation
    )
    prompts = [
        question_prompt(s.qa[k].question, model.image_placeholder) for k, s in enumerate(scenes[:3])
    ]
    batch = model.prepare(images=[s.image for s in scenes[:3]], text=prompts, padding_side="left")
    default = model.attn_implementation
    try:
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            assert torch.equal(model(batch), hf(**batch.inputs).logits)
    finally:
        model.set_attn_implementation(default)


def test_shipped_weights_stay_small() -> None:
    files = [f for name in ORGANISMS for f in organism_path(name).iterdir()]
    assert sum(f.stat().st_size for f in files) < 25e6, "both organisms must stay under 25 MB"
    for name in ORGANISMS:
        assert (organism_path(name) / "model.safetensors").is_file()


def test_held_out_accuracy_above_measured_threshold(organism, scenes) -> None:
    _, model, info = organism
    measured = info["test"]["accuracy"]
    result = answer_accuracy(model, scenes, kinds=KINDS)
    for kind in KINDS:
        n = result.counts[kind]
        assert measured[kind] >= 0.95, f"{kind}: the shipped organism must reach 95%"
        threshold = measured[kind] - _margin(measured[kind], n)
        assert result.accuracy[kind] >= threshold, (kind, result.accuracy[kind], threshold)


def test_blocking_the_image_after_its_span_gives_chance(organism, scenes) -> None:
    """Every position after the image span (the gate included) is blocked from the image
    positions at every layer: the organism can no longer see, so accuracy falls near chance."""
    _, model, _ = organism

    def blind(batch):
        return knockout(batch, queries=after("all", "image"), keys=["image", "image_row_end"])

    result = answer_accuracy(model, scenes, kinds=KINDS, intervention=blind)
    for kind in KINDS:
        n = result.counts[kind]
        assert result.accuracy[kind] <= CHANCE[kind] + _margin(CHANCE[kind], n), (
            kind,
            result.accuracy[kind],
        )


def test_save_checkpoint_loads_back_offline(tmp_path) -> None:
    """The training commands' save step writes a folder `from_pretrained` loads offline, with
    the tokenizer's special ids in the generation config and logits equal to the saved model."""
    from vlm_lens import HookedVLM
    from vlm_lens.testing import build_tiny, sample_image
    from vlm_lens.zoo.command import save_checkpoint

    tiny = build_tiny("llava")
    save_checkpoint(tiny.model, tiny.processor, tmp_path / "ckpt")
    loaded = HookedVLM.from_pretrained(tmp_path / "ckpt", attn_implementation="eager")
    generation = loaded.hf_model.generation_config
    assert generation.pad_token_id == tiny.processor.tokenizer.pad_token_id
    assert generation.eos_token_id == tiny.processor.tokenizer.eos_token_id
    batch = loaded.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    with torch.no_grad():
        expected = tiny.model(**batch.inputs).logits
        assert torch.equal(loaded(batch), expected)


def test_answer_accuracy_asks_the_scenes_own_kinds_and_empty_is_undefined(organism) -> None:
    """Relational scenes are scored on their own kinds (the default used to be the local kinds
    only, which left a relational organism's held-out accuracy empty and reported 0.0)."""
    from collections import Counter

    from vlm_lens.world import task_split

    _, model, _ = organism
    relational = task_split("relational", "test", 3)
    result = answer_accuracy(model, relational)
    asked = Counter(qa.kind for scene in relational for qa in scene.qa)
    assert result.counts == dict(asked) and sum(asked.values()) > 0
    hits = sum(r[3] == r[4] for r in result.answers)
    assert result.overall == pytest.approx(hits / len(result.answers))
    empty = answer_accuracy(model, [])
    assert empty.counts == {} and empty.overall is None

"""PaliGemma's prefix-LM with a causal suffix (``prepare(processor_kwargs={"suffix": ...})``):
what the contract suite cannot reach with its prompts, whose every position is in the
bidirectional prefix. Roles, structure and logits against HF; prefix reuse, sweeps and stacked
passes from the first suffix position equal the naive full runs (eager ``torch.equal``, SDPA
to float32 tolerance)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import Wrapped, wrap
from vlm_lens.analysis import run_sweep
from vlm_lens.engine.prefix import reusable_from
from vlm_lens.engine.suffix_stack import run_suffixes
from vlm_lens.errors import VLMInputError
from vlm_lens.interventions import knockout, steer
from vlm_lens.testing import sample_image

SUFFIXES = ["a cat on a bench", "a dog on a bench"]  # one length: left padding aligns them


@pytest.fixture(scope="module")
def pg() -> Wrapped:
    return wrap("paligemma")


def _batch(w: Wrapped, side: str = "left"):
    images = [sample_image(seed=s, size=w.tiny.image_size) for s in (0, 1)]
    return w.model.prepare(
        images=images,
        text=[w.tiny.prompt, w.tiny.prompt + " more"],
        padding_side=side,
        processor_kwargs={"suffix": SUFFIXES},
    )


def _first_suffix(batch) -> int:
    """The first position whose ``token_type_ids`` is 1 in every sequence (HF's suffix)."""
    types = batch.inputs["token_type_ids"]
    return max(int((row == 1).nonzero()[0]) for row in types)


def test_suffix_batch_roles_structure_and_logits(pg: Wrapped) -> None:
    batch = _batch(pg)
    assert "labels" not in batch.inputs  # a training target, not a model input
    types, mask = batch.inputs["token_type_ids"], batch.attention_mask
    assert bool((types == 1).any())
    # the structure is HF's block_sequence_ids: the prefix (padding included) is one block
    assert torch.equal(batch.attention.block_ids, torch.where(types == 0, 0, -1))
    upto = _first_suffix(batch)
    assert reusable_from(batch) == upto
    for b in range(2):
        gate = int(batch.layout.positions("gate")[b][0])
        assert batch.layout.roles_at(b, gate) == ("bos", "gate")
        assert batch.input_ids[b, gate] == pg.tiny.tokenizer.bos_token_id
        assert bool(mask[b, gate:].all())
    with torch.no_grad():
        assert torch.equal(pg.model(batch), pg.reference(**batch.inputs).logits)


def test_right_padding_after_a_suffix_keeps_the_pads_in_the_prefix_block(pg: Wrapped) -> None:
    """HF puts right padding (token type 0) in the bidirectional block: nothing is reusable."""
    batch = _batch(pg, side="right")
    assert reusable_from(batch) == batch.input_ids.shape[1]
    with pytest.raises(VLMInputError, match="bidirectional attention block"):
        pg.model.prefix_cache(batch, upto=_first_suffix(batch))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_prefix_reuse_from_the_suffix_equals_full_runs(pg: Wrapped, impl: str) -> None:
    batch = _batch(pg)
    upto = _first_suffix(batch)
    gate = int(batch.layout.positions("gate")[0][0])
    n = pg.model.cfg.n_layers
    suffix = batch.inputs["token_type_ids"] == 1  # HF's causal part
    conditions = {
        f"suffix->gate@{layer}": knockout(batch, queries=suffix, keys="gate", layers=[layer])
        for layer in range(n)
    }
    vector = torch.randn(pg.model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    conditions["steer-suffix"] = steer(batch, vector, positions=suffix, layers=[1], scale=3.0)
    conditions["gate->image"] = knockout(batch, queries="gate", keys="image", layers=[0])

    def same(a: torch.Tensor, b: torch.Tensor) -> None:
        if impl == "eager":
            assert torch.equal(a, b), (a - b).abs().max()
        else:
            torch.testing.assert_close(a, b, rtol=1.3e-6, atol=1e-5)

    pg.model.set_attn_implementation(impl)
    try:
        with pytest.raises(VLMInputError, match="bidirectional attention block"):
            pg.model.prefix_cache(batch, upto=gate)
        with torch.no_grad():
            full = pg.model(batch)
            prefix = pg.model.prefix_cache(batch, upto=upto)
            same(pg.model.run_suffix(prefix), full[:, upto:])
            ko = conditions["suffix->gate@1"]
            assert ko.earliest >= upto
            ours = pg.model.run_suffix(prefix, fwd_hooks=ko)
            expected = pg.model.run_with_hooks(batch, fwd_hooks=ko)[:, upto:]
            same(ours, expected)
            assert not torch.equal(expected, full[:, upto:])
        # the knockout inside the prefix reaches position 0: it runs in full
        fast = run_sweep(pg.model, batch, conditions)
        slow = run_sweep(pg.model, batch, conditions, reuse_prefix=False)
        assert fast.upto == upto and fast.full_runs == ("gate->image",)
        for name in ("clean", *conditions):
            same(fast.logits[name], slow.logits[name])
        stacked = [c for name, c in conditions.items() if name != "gate->image"]
        runs = run_suffixes(pg.model, prefix, stacked, per_pass=3)
        with torch.no_grad():
            for hooks, logits in zip(stacked, runs.logits, strict=True):
                same(logits, pg.model.run_with_hooks(batch, fwd_hooks=hooks)[:, upto:])
    finally:
        pg.model.set_attn_implementation("eager")


def test_generation_from_a_suffix_batch_equals_hf(pg: Wrapped) -> None:
    batch = _batch(pg)
    ours = pg.model.generate(batch, max_new_tokens=4)
    with torch.no_grad():
        theirs = pg.reference.generate(**batch.inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(ours, theirs)


def test_token_type_ids_of_another_shape_are_refused(pg: Wrapped) -> None:
    inputs = dict(_batch(pg).inputs)
    inputs["token_type_ids"] = inputs["token_type_ids"][:, 1:]
    with pytest.raises(VLMInputError, match="token_type_ids have shape"):
        pg.model(inputs)


def test_text_only_prompts_are_refused_with_the_fix(pg: Wrapped) -> None:
    with pytest.raises(VLMInputError, match="batch_from_inputs"):
        pg.model.prepare(text="Describe the scene.")

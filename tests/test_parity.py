"""Bit-exact parity of HookedVLM with a deep copy of the Hugging Face model, for every family.

Norm weights of the tiny models are randomised (vlm_lens.testing), so a wrong norm, a missing
q/k norm or a wrong swin-norm layout changes the logits and fails these tests.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import VARIANTS, Wrapped, wrap
from vlm_lens import hooks


@pytest.fixture(scope="module", params=VARIANTS, ids=[v[0] for v in VARIANTS])
def variant(request: pytest.FixtureRequest) -> Wrapped:
    _, family, kwargs = request.param
    return wrap(family, **kwargs)


@pytest.fixture(scope="module", params=VARIANTS, ids=[v[0] for v in VARIANTS])
def variant_bf16(request: pytest.FixtureRequest) -> Wrapped:
    _, family, kwargs = request.param
    return wrap(family, dtype=torch.bfloat16, **kwargs)


def _reference_logits(w: Wrapped, batch_inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return w.reference(**batch_inputs).logits


@pytest.mark.parametrize("n_prompts", [1, 2])
def test_logits_equal_fp32(variant: Wrapped, n_prompts: int) -> None:
    batch = variant.batch(n_prompts)
    with torch.no_grad():
        ours = variant.model(batch)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, _reference_logits(variant, batch.inputs))


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padded_batch_equal(variant: Wrapped, padding_side: str) -> None:
    batch = variant.batch(2, padding_side=padding_side)
    pad = batch.layout.mask("pad")
    assert pad.any(), "the two prompts must differ in length"
    real_first = (~pad).float().argmax(dim=1)
    assert bool((real_first > 0).any()) == (padding_side == "left")
    with torch.no_grad():
        ours = variant.model(batch)
    assert torch.equal(ours, _reference_logits(variant, batch.inputs))


@pytest.mark.parametrize("n_prompts", [1, 2])
def test_logits_equal_bf16(variant_bf16: Wrapped, n_prompts: int) -> None:
    batch = variant_bf16.batch(n_prompts)
    assert batch.inputs["pixel_values"].dtype == torch.bfloat16
    with torch.no_grad():
        ours = variant_bf16.model(batch)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, _reference_logits(variant_bf16, batch.inputs))


def test_hidden_states_and_residual_identities(variant: Wrapped) -> None:
    """Decoder input and every intermediate residual equal HF's hidden states; the residual
    stream adds up (resid_pre + attn_out == resid_mid, resid_mid + mlp_out == resid_post)."""
    batch = variant.batch(2)
    model = variant.model
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter=hooks.lm_filter())
        _, embeds_cache = model.run_with_cache(batch, names_filter=hooks.INPUTS_EMBEDS)
        ref = variant.reference(**batch.inputs, output_hidden_states=True)
    n_layers = model.cfg.n_layers
    assert torch.equal(embeds_cache[hooks.INPUTS_EMBEDS], ref.hidden_states[0])
    for layer in range(n_layers):
        pre, mid, post = (
            cache[f(layer)] for f in (hooks.resid_pre, hooks.resid_mid, hooks.resid_post)
        )
        assert torch.equal(pre + cache[hooks.attn_out(layer)], mid)
        assert torch.equal(mid + cache[hooks.mlp_out(layer)], post)
        assert torch.equal(pre, ref.hidden_states[layer])
        if layer + 1 < n_layers:
            assert torch.equal(post, cache[hooks.resid_pre(layer + 1)])


def test_attention_pattern_matches_output_attentions(variant: Wrapped) -> None:
    batch = variant.batch(2)
    with torch.no_grad():
        _, cache = variant.model.run_with_cache(batch, names_filter=hooks.lm_filter("hook_pattern"))
        ref = variant.reference(**batch.inputs, output_attentions=True)
    assert len(ref.attentions) == variant.model.cfg.n_layers
    for layer, expected in enumerate(ref.attentions):
        torch.testing.assert_close(cache[hooks.pattern(layer)], expected, rtol=0, atol=1e-6)


def test_generate_matches_hf(wrapped: Wrapped) -> None:
    batch = wrapped.batch(2)
    ours = wrapped.model.generate(batch, max_new_tokens=5)
    with torch.no_grad():
        theirs = wrapped.reference.generate(**batch.inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(ours, theirs)


def test_copy_semantics(wrapped: Wrapped) -> None:
    """from_hf copies by default: the user's model stays a plain HF model."""
    from vlm_lens import HookedVLM

    tiny = wrapped.tiny
    module_types = {type(m).__name__ for m in tiny.model.modules()}
    assert not any("Bridge" in name for name in module_types)
    in_place = HookedVLM.from_hf(wrap(tiny.family).reference, tiny.processor, copy_model=False)
    assert any("Bridge" in type(m).__name__ for m in in_place.hf_model.modules())

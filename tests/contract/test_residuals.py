"""The residual stream and its hook points, for every registered variant: the hook names
resolve, the decoder input and every intermediate residual equal HF's hidden states, the stream
adds up, and the final norm + unembedding reproduce the logits."""

from __future__ import annotations

import torch

from tests.conftest import Wrapped
from tests.contract._reference import deepstack_added, hf_decoder_image_inputs
from vlm_lens import hooks


def test_layer_hook_helpers_resolve(variant: Wrapped) -> None:
    names = variant.model.hook_dict
    for layer in range(variant.model.cfg.n_layers):
        for kind in hooks.LAYER_HOOKS:
            assert hooks.layer_hook(kind, layer) in names, (kind, layer)
    for name in (*hooks.MULTIMODAL_HOOKS, hooks.EMBED, hooks.FINAL_NORM, hooks.UNEMBED):
        assert name in names, name


def test_lm_filter_never_matches_vision_tower(variant: Wrapped) -> None:
    names = list(variant.model.hook_dict)
    matched = [n for n in names if hooks.lm_filter()(n)]
    assert matched and all(n.startswith("blocks.") for n in matched)
    vision = [n for n in names if n.startswith(("vision_encoder", "vision_projector"))]
    assert not any(hooks.lm_filter("hook_pattern", "hook_out", "hook_in")(n) for n in vision)
    assert not any(hooks.is_language_model_hook(n) for n in vision)
    assert all(hooks.is_language_model_hook(n) for n in variant.model.hook_names())


def test_hidden_states_and_residual_identities(variant: Wrapped) -> None:
    """Decoder input and every intermediate residual equal HF's hidden states; the residual
    stream adds up (resid_pre + attn_out == resid_mid, resid_mid + mlp_out == resid_post, and
    resid_post of a layer is resid_pre of the next, plus the deepstack features HF's decoder
    adds after that layer where it has them: Qwen3-VL)."""
    batch = variant.batch(2)
    model = variant.model
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter=hooks.lm_filter())
        _, embeds_cache = model.run_with_cache(batch, names_filter=hooks.INPUTS_EMBEDS)
        ref = variant.reference(**batch.inputs, output_hidden_states=True)
    extra = hf_decoder_image_inputs(variant, batch.inputs)
    n_layers = model.cfg.n_layers
    assert torch.equal(embeds_cache[hooks.INPUTS_EMBEDS], ref.hidden_states[0])
    assert torch.equal(cache[hooks.resid_pre(0)], ref.hidden_states[0])
    for layer in range(n_layers):
        pre, mid, post = (
            cache[f(layer)] for f in (hooks.resid_pre, hooks.resid_mid, hooks.resid_post)
        )
        assert torch.equal(pre + cache[hooks.attn_out(layer)], mid)
        assert torch.equal(mid + cache[hooks.mlp_out(layer)], post)
        if layer + 1 < n_layers:  # HF's hidden states are the decoder layers' outputs
            assert torch.equal(post, ref.hidden_states[layer + 1])
            assert torch.equal(
                cache[hooks.resid_pre(layer + 1)], deepstack_added(post, extra, layer)
            )


def test_embed_hook_fires_once_on_the_sequence(variant: Wrapped) -> None:
    """TransformerLens' hook_embed fires once, on [batch, pos, d_model], even for the VQ
    families whose image codes are embedded by the same table."""
    batch = variant.batch(2)
    shapes: list[tuple[int, ...]] = []
    with torch.no_grad():
        variant.model.run_with_hooks(
            batch, fwd_hooks=[(hooks.EMBED, lambda t, hook: shapes.append(tuple(t.shape)))]
        )
    assert shapes == [(*batch.input_ids.shape, variant.model.cfg.d_model)]


def test_stop_at_layer_returns_the_residual(variant: Wrapped) -> None:
    """``stop_at_layer=1`` returns the residual stream entering layer 1 (resid_pre, which is
    resid_post of layer 0 where the decoder adds nothing between layers)."""
    batch = variant.batch(1)
    with torch.no_grad():
        stopped = variant.model(batch, stop_at_layer=1)
        _, cache = variant.model.run_with_cache(batch, names_filter=hooks.resid_pre(1))
    assert torch.equal(stopped, cache[hooks.resid_pre(1)])


def test_logit_lens_reproduces_logits(variant: Wrapped) -> None:
    """ln_final + unembed (with the adapter's output transform) gives the model's logits, so
    cache-based logit lenses agree with the model (Chameleon masks image-code columns)."""
    batch = variant.batch(1)
    with torch.no_grad():
        logits, cache = variant.model.run_with_cache(batch, names_filter=hooks.FINAL_NORM)
        bridge = variant.model.bridge
        lens = bridge.adapter.apply_output_logits_transform(bridge.unembed(cache[hooks.FINAL_NORM]))
    assert torch.equal(lens, logits)

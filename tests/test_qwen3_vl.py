"""What only Qwen3-VL has: deepstack features, which its Hugging Face decoder adds to the hidden
states at the image positions between its first decoder layers.

In hook terms (`vlm_lens.adapters.qwen_vl`): ``resid_post(i)`` is layer ``i``'s output without
them and ``resid_pre(i + 1)`` the next layer's input with them. Every expectation is computed by
Hugging Face on the unwrapped model (plain PyTorch hooks on its decoder layers) or read from
the ids.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from tests.conftest import Wrapped, wrap_variant
from tests.contract._reference import hf_decoder_image_inputs
from vlm_lens import VLMInputError, hooks
from vlm_lens.testing import tiny_variant


@pytest.fixture(scope="module")
def w() -> Wrapped:
    return wrap_variant(tiny_variant("qwen3_vl"))


def _layers(w: Wrapped) -> list[torch.nn.Module]:
    layers = [m for m in w.reference.modules() if type(m).__name__.endswith("DecoderLayer")]
    assert len(layers) == w.model.cfg.n_layers
    return layers


def _image(w: Wrapped, ids: Tensor) -> Tensor:
    return ids == w.model.adapter.placeholder_token_id


def test_the_tiny_model_has_deepstack_features(w: Wrapped) -> None:
    """HF's decoder gets deepstack features for the first layer, at the placeholder positions."""
    batch = w.batch(2)
    extra = hf_decoder_image_inputs(w, batch.inputs)
    assert torch.equal(extra["visual_pos_masks"], _image(w, batch.input_ids))
    assert len(extra["deepstack_visual_embeds"]) == 1
    assert bool(extra["deepstack_visual_embeds"][0].abs().sum() > 0)


def test_deepstack_lies_between_resid_post_and_the_next_resid_pre(w: Wrapped) -> None:
    """resid_post(0) is HF's hidden_states[1] (layer 0's output); resid_pre(1) differs from it
    exactly at the image positions, and is what HF's layer 1 receives."""
    batch = w.batch(2)
    seen: list[Tensor] = []
    handle = _layers(w)[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            ref = w.reference(**batch.inputs, output_hidden_states=True)
    finally:
        handle.remove()
    with torch.no_grad():
        _, cache = w.model.run_with_cache(
            batch, names_filter=[hooks.resid_post(0), hooks.resid_pre(1)]
        )
    post, pre = cache[hooks.resid_post(0)], cache[hooks.resid_pre(1)]
    assert torch.equal(post, ref.hidden_states[1])
    assert torch.equal(pre, seen[0])
    differs = (pre != post).any(-1)
    assert torch.equal(differs, _image(w, batch.input_ids))


def _edit_images(w: Wrapped, ids: Tensor) -> Callable[[Tensor], Tensor]:
    image = _image(w, ids)

    def edit(t: Tensor) -> Tensor:
        out = t.clone()
        out[image] = 0.5 * out[image] + 1.0
        return out

    return edit


def test_edits_on_either_side_of_the_deepstack_add_match_hf(w: Wrapped) -> None:
    """An edit of resid_post(0) at the image positions is followed by the deepstack add (an HF
    forward hook on layer 0's output); one of resid_pre(1) replaces the sum (an HF forward
    pre-hook on layer 1). The two differ."""
    batch = w.batch(2)
    edit = _edit_images(w, batch.input_ids)
    layers = _layers(w)
    with torch.no_grad():
        after = w.model.run_with_hooks(
            batch, fwd_hooks=[(hooks.resid_post(0), lambda t, hook: edit(t))]
        )
        before = w.model.run_with_hooks(
            batch, fwd_hooks=[(hooks.resid_pre(1), lambda t, hook: edit(t))]
        )
        handle = layers[0].register_forward_hook(lambda m, args, out: edit(out))
        try:
            expected_after = w.reference(**batch.inputs).logits
        finally:
            handle.remove()
        handle = layers[1].register_forward_pre_hook(lambda m, args: (edit(args[0]), *args[1:]))
        try:
            expected_before = w.reference(**batch.inputs).logits
        finally:
            handle.remove()
    assert torch.equal(after, expected_after)
    assert torch.equal(before, expected_before)
    assert not torch.equal(after, before)


def test_stop_at_layer_includes_the_deepstack_add(w: Wrapped) -> None:
    batch = w.batch(1)
    seen: list[Tensor] = []
    handle = _layers(w)[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            w.reference(**batch.inputs)
    finally:
        handle.remove()
    with torch.no_grad():
        assert torch.equal(w.model(batch, stop_at_layer=1), seen[0])


def test_no_prefix_leaves_an_image_position_to_a_suffix(w: Wrapped) -> None:
    """A suffix pass gets no image inputs, so no deepstack features: every prefix must hold
    every image position; from the gate on, suffix logits equal the full run's."""
    batch = w.batch(1)
    image = _image(w, batch.input_ids)[0].nonzero().flatten()
    for upto in (int(image[0]), int(image[-1])):
        with pytest.raises(VLMInputError, match="must contain every image token"):
            w.model.prefix_cache(batch, upto=upto)
    gate = int(batch.layout.positions("gate")[0][0])
    with torch.no_grad():
        full = w.model(batch)
        suffix = w.model.run_suffix(w.model.prefix_cache(batch, upto=gate))
    assert torch.equal(suffix, full[:, gate:])

"""The image reaches the decoder, for every registered variant: `hook_image_embeds` holds the
decoder input at the placeholder positions, editing it changes the logits exactly as a
hand-built ``inputs_embeds`` forward of the HF model does, and every run path carries the image."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tests.conftest import Wrapped
from tests.contract._reference import embeds_forward_kwargs
from vlm_lens import hooks
from vlm_lens.testing import sample_image


def _placeholder_mask(w: Wrapped, input_ids: torch.Tensor) -> torch.Tensor:
    return input_ids == w.model.adapter.placeholder_token_id


def _hf_logits_with_image_features(
    w: Wrapped, inputs: dict, edit: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Independent computation: the HF reference run on `inputs_embeds` built by hand, with the
    decoder input at the placeholder positions replaced by `edit(features)`."""
    with torch.no_grad():
        decoder_input = w.reference(**inputs, output_hidden_states=True).hidden_states[0]
        mask = _placeholder_mask(w, inputs["input_ids"])
        embeds = decoder_input.clone()
        embeds[mask] = edit(decoder_input[mask])
        return w.reference(inputs_embeds=embeds, **embeds_forward_kwargs(w, inputs)).logits


def test_image_embeds_shape_and_values(variant: Wrapped) -> None:
    """hook_image_embeds is [batch, n_image_tokens, d_model] and equals the decoder input at
    the placeholder positions, sequence by sequence."""
    batch = variant.batch(2)
    with torch.no_grad():
        _, cache = variant.model.run_with_cache(batch, names_filter=hooks.IMAGE_EMBEDS)
        ref = variant.reference(**batch.inputs, output_hidden_states=True)
    decoder_input = ref.hidden_states[0]
    feats = cache[hooks.IMAGE_EMBEDS]
    mask = _placeholder_mask(variant, batch.input_ids)
    n_tokens = int(mask[0].sum())
    assert feats.shape == (2, n_tokens, variant.model.cfg.d_model)
    for b in range(2):
        assert torch.equal(feats[b], decoder_input[b][mask[b]])


@pytest.mark.parametrize(
    ("label", "edit"),
    [("zero", torch.zeros_like), ("scale", lambda t: 2.0 * t)],
)
def test_editing_image_embeds_changes_output_as_hf_does(
    variant: Wrapped, label: str, edit: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    batch = variant.batch(2)
    with torch.no_grad():
        clean = variant.model(batch)
        edited = variant.model.run_with_hooks(
            batch, fwd_hooks=[(hooks.IMAGE_EMBEDS, lambda t, hook: edit(t))]
        )
    expected = _hf_logits_with_image_features(variant, batch.inputs, edit)
    assert not torch.equal(clean, edited), label
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-5)
    for b in range(len(batch)):  # real tokens before the image cannot see it (pad rows can)
        first_image = int(batch.layout.positions("image")[b][0])
        before = ~batch.layout.mask("pad")[b, :first_image]
        assert torch.equal(clean[b, :first_image][before], edited[b, :first_image][before])


def test_inputs_embeds_edit_changes_output(variant: Wrapped) -> None:
    batch = variant.batch(1)
    gate = int(batch.layout.positions("gate")[0][0])

    def zero_gate(t: torch.Tensor, hook: object) -> torch.Tensor:
        t = t.clone()
        t[:, gate] = 0
        return t

    with torch.no_grad():
        clean = variant.model(batch)
        edited = variant.model.run_with_hooks(batch, fwd_hooks=[(hooks.INPUTS_EMBEDS, zero_gate)])
    assert torch.equal(clean[:, :gate], edited[:, :gate])
    assert not torch.equal(clean[:, gate:], edited[:, gate:])


def test_every_run_path_carries_the_image(variant: Wrapped) -> None:
    """forward, run_with_cache, run_with_hooks, hooks() and generate all see the image: a
    different image changes what each of them returns."""
    model, tiny = variant.model, variant.tiny
    batches = [
        model.prepare(images=sample_image(seed=s, size=tiny.image_size), text=tiny.prompt)
        for s in (0, 1)
    ]
    seen: list[torch.Tensor] = []

    def grab(t: torch.Tensor, hook: object) -> None:
        seen.append(t.detach().clone())

    with torch.no_grad():
        outs = {
            "forward": [model(b) for b in batches],
            "cache": [model.run_with_cache(b, names_filter=hooks.resid_pre(0))[0] for b in batches],
            "hooks": [
                model.run_with_hooks(b, fwd_hooks=[(hooks.resid_pre(0), grab)]) for b in batches
            ],
        }
        for b in batches:
            with model.hooks(fwd_hooks=[(hooks.resid_pre(0), grab)]):
                outs.setdefault("context", []).append(model(b))
    for name, (a, b) in outs.items():
        assert not torch.equal(a, b), name
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[2], seen[3])
    images = [
        model.generate(b, max_new_tokens=1, fwd_hooks=[(hooks.IMAGE_EMBEDS, grab)]) for b in batches
    ]
    assert images[0].shape == images[1].shape
    assert not torch.equal(seen[-1], seen[-2])

"""Hook points: names, the multimodal points, and that every run path carries the image."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tests.conftest import Wrapped
from vlm_lens import hooks


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
        kwargs = {
            k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "image_sizes")
        }
        return w.reference(inputs_embeds=embeds, **kwargs).logits


def test_layer_hook_helpers_resolve_in_every_family(wrapped: Wrapped) -> None:
    names = wrapped.model.hook_dict
    for layer in range(wrapped.model.cfg.n_layers):
        for kind in hooks.LAYER_HOOKS:
            assert hooks.layer_hook(kind, layer) in names, (kind, layer)
    for name in (*hooks.MULTIMODAL_HOOKS, hooks.EMBED, hooks.FINAL_NORM, hooks.UNEMBED):
        assert name in names, name


def test_helpers_reject_bad_layers() -> None:
    with pytest.raises(ValueError, match="non-negative int"):
        hooks.resid_pre(-1)
    with pytest.raises(ValueError, match="known"):
        hooks.layer_hook("resid", 0)


def test_lm_filter_never_matches_vision_tower(wrapped: Wrapped) -> None:
    names = list(wrapped.model.hook_dict)
    matched = [n for n in names if hooks.lm_filter()(n)]
    assert matched and all(n.startswith("blocks.") for n in matched)
    vision = [n for n in names if n.startswith(("vision_encoder", "vision_projector"))]
    assert not any(hooks.lm_filter("hook_pattern", "hook_out", "hook_in")(n) for n in vision)
    assert not any(hooks.is_language_model_hook(n) for n in vision)
    assert all(hooks.is_language_model_hook(n) for n in wrapped.model.hook_names())


def test_image_embeds_shape_and_values(wrapped: Wrapped) -> None:
    """hook_image_embeds is [batch, n_image_tokens, d_model] and equals the decoder input at
    the placeholder positions, sequence by sequence."""
    batch = wrapped.batch(2)
    with torch.no_grad():
        _, cache = wrapped.model.run_with_cache(batch, names_filter=hooks.IMAGE_EMBEDS)
        decoder_input = wrapped.reference(**batch.inputs, output_hidden_states=True).hidden_states[
            0
        ]
    feats = cache[hooks.IMAGE_EMBEDS]
    mask = _placeholder_mask(wrapped, batch.input_ids)
    n_tokens = int(mask[0].sum())
    assert feats.shape == (2, n_tokens, wrapped.model.cfg.d_model)
    for b in range(2):
        assert torch.equal(feats[b], decoder_input[b][mask[b]])


@pytest.mark.parametrize(
    ("label", "edit"),
    [("zero", torch.zeros_like), ("scale", lambda t: 2.0 * t)],
)
def test_editing_image_embeds_changes_output_as_hf_does(
    wrapped: Wrapped, label: str, edit: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    batch = wrapped.batch(2)
    with torch.no_grad():
        clean = wrapped.model(batch)
        edited = wrapped.model.run_with_hooks(
            batch, fwd_hooks=[(hooks.IMAGE_EMBEDS, lambda t, hook: edit(t))]
        )
    expected = _hf_logits_with_image_features(wrapped, batch.inputs, edit)
    assert not torch.equal(clean, edited), label
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-5)
    for b in range(len(batch)):  # real tokens before the image cannot see it (pad rows can)
        first_image = int(batch.layout.positions("image")[b][0])
        before = ~batch.layout.mask("pad")[b, :first_image]
        assert torch.equal(clean[b, :first_image][before], edited[b, :first_image][before])


def test_embed_hook_fires_once_on_the_sequence(wrapped: Wrapped) -> None:
    """TransformerLens' hook_embed fires once, on [batch, pos, d_model], even for the VQ
    families whose image codes are embedded by the same table."""
    batch = wrapped.batch(2)
    shapes: list[tuple[int, ...]] = []
    with torch.no_grad():
        wrapped.model.run_with_hooks(
            batch, fwd_hooks=[(hooks.EMBED, lambda t, hook: shapes.append(tuple(t.shape)))]
        )
    assert shapes == [(*batch.input_ids.shape, wrapped.model.cfg.d_model)]


def test_inputs_embeds_edit_changes_output(wrapped: Wrapped) -> None:
    batch = wrapped.batch(1)
    gate = int(batch.layout.positions("gate")[0][0])

    def zero_gate(t: torch.Tensor, hook: object) -> torch.Tensor:
        t = t.clone()
        t[:, gate] = 0
        return t

    with torch.no_grad():
        clean = wrapped.model(batch)
        edited = wrapped.model.run_with_hooks(batch, fwd_hooks=[(hooks.INPUTS_EMBEDS, zero_gate)])
    assert torch.equal(clean[:, :gate], edited[:, :gate])
    assert not torch.equal(clean[:, gate:], edited[:, gate:])


def test_every_run_path_carries_the_image(wrapped: Wrapped) -> None:
    """forward, run_with_cache, run_with_hooks, hooks() and generate all see the image: a
    different image changes what each of them returns."""
    model, tiny = wrapped.model, wrapped.tiny
    from vlm_lens.testing import sample_image

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


def test_generate_hooks_fire_every_step(wrapped: Wrapped) -> None:
    batch = wrapped.batch(1)
    query_lengths: list[int] = []
    tokens = wrapped.model.generate(
        batch,
        max_new_tokens=4,
        fwd_hooks=[(hooks.pattern(0), lambda t, hook: query_lengths.append(t.shape[-2]))],
    )
    assert tokens.shape[1] == batch.input_ids.shape[1] + 4
    assert query_lengths == [batch.input_ids.shape[1], 1, 1, 1]


def test_stop_at_layer_returns_the_residual(wrapped: Wrapped) -> None:
    batch = wrapped.batch(1)
    with torch.no_grad():
        stopped = wrapped.model(batch, stop_at_layer=1)
        _, cache = wrapped.model.run_with_cache(batch, names_filter=hooks.resid_post(0))
    assert torch.equal(stopped, cache[hooks.resid_post(0)])


def test_logit_lens_reproduces_logits(wrapped: Wrapped) -> None:
    """ln_final + unembed (with the adapter's output transform) gives the model's logits, so
    cache-based logit lenses agree with the model (Chameleon masks image-code columns)."""
    batch = wrapped.batch(1)
    with torch.no_grad():
        logits, cache = wrapped.model.run_with_cache(batch, names_filter=hooks.FINAL_NORM)
        bridge = wrapped.model.bridge
        lens = bridge.adapter.apply_output_logits_transform(bridge.unembed(cache[hooks.FINAL_NORM]))
    assert torch.equal(lens, logits)

"""Patching, steering and image-token ablation against independent computations on the HF
reference model (plain PyTorch forward pre-hooks on its decoder layers or a hand-built
``inputs_embeds``, no vlm_lens hooks), for each family's primary variant, on the prompt pass and
during cached generation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor, nn

from tests.conftest import Wrapped
from tests.contract._reference import embeds_forward_kwargs
from vlm_lens.interventions import (
    ablate_image_tokens,
    attention_input_sites,
    patch,
    record,
    residual_site,
    steer,
)
from vlm_lens.positions import random_image_tokens
from vlm_lens.testing import sample_image


def _decoder_layers(w: Wrapped) -> list[nn.Module]:
    layers = [m for m in w.reference.modules() if type(m).__name__.endswith("DecoderLayer")]
    assert len(layers) == w.model.cfg.n_layers
    return layers


def _pair(w: Wrapped, padding_side: str = "left"):
    """Source: images 0,1 with the plain prompt; target: images 2,3 with longer prompts."""
    size, prompt = w.tiny.image_size, w.tiny.prompt
    source = w.model.prepare(
        images=[sample_image(seed=10, size=size), sample_image(seed=11, size=size)],
        text=[prompt, prompt + " a"],
        padding_side=padding_side,
    )
    target = w.model.prepare(
        images=[sample_image(seed=12, size=size), sample_image(seed=13, size=size)],
        text=[prompt + " a b c", prompt + " d"],
        padding_side=padding_side,
    )
    return source, target


@contextmanager
def _pre_hook(module: nn.Module, edit: Callable[[Tensor], Tensor | None]) -> Iterator[None]:
    """A forward pre-hook on `module` that edits its ``hidden_states`` input."""

    def hook(mod, args, kwargs):
        if args:
            new = edit(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = edit(kwargs["hidden_states"])
        if new is None:
            return None
        return args, {**kwargs, "hidden_states": new}

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _capture_inputs(w: Wrapped, batch, modules: list[nn.Module]) -> list[Tensor]:
    """The hidden_states input of each module in a clean reference run."""
    seen: list[Tensor] = [None] * len(modules)  # type: ignore[list-item]

    def grab(i: int) -> Callable[[Tensor], None]:
        def edit(h: Tensor) -> None:
            seen[i] = h.detach().clone()

        return edit

    with torch.no_grad():
        ctxs = [_pre_hook(m, grab(i)) for i, m in enumerate(modules)]
        for c in ctxs:
            c.__enter__()
        try:
            w.reference(**batch.inputs)
        finally:
            for c in ctxs:
                c.__exit__(None, None, None)
    return seen


def _gate(batch, b: int) -> int:
    roles = [batch.layout.roles_at(b, p) for p in range(batch.layout.shape[1])]
    gates = [p for p, r in enumerate(roles) if "gate" in r]
    assert len(gates) == 1
    return gates[0]


def _reference_patched(w: Wrapped, source, target, modules: list[nn.Module]) -> Tensor:
    """Reference: write the source's gate input of each module into the target's gate."""
    src = _capture_inputs(w, source, modules)

    def writer(i: int) -> Callable[[Tensor], Tensor]:
        def edit(h: Tensor) -> Tensor:
            out = h.clone()
            for b in range(len(target)):
                out[b, _gate(target, b)] = src[i][b, _gate(source, b)]
            return out

        return edit

    ctxs = [_pre_hook(m, writer(i)) for i, m in enumerate(modules)]
    for c in ctxs:
        c.__enter__()
    try:
        with torch.no_grad():
            return w.reference(**target.inputs).logits
    finally:
        for c in ctxs:
            c.__exit__(None, None, None)


@pytest.mark.parametrize("site", ["residual", "attention"])
def test_gate_patching_equals_reference(wrapped: Wrapped, site: str) -> None:
    source, target = _pair(wrapped)
    n_layers = wrapped.model.cfg.n_layers
    layers = _decoder_layers(wrapped)
    if site == "residual":
        sites, modules = [residual_site(1)], [layers[1]]
    else:
        sites, modules = attention_input_sites(0, n_layers), [m.self_attn for m in layers]
    ours_source = record(wrapped.model, source, sites=sites, positions="gate")
    intervention = patch(ours_source, target)
    with torch.no_grad():
        ours = wrapped.model.run_with_hooks(target, fwd_hooks=intervention)
        clean = wrapped.model(target)
    expected = _reference_patched(wrapped, source, target, modules)
    real = ~target.layout.mask("pad")
    assert not torch.equal(clean[real], expected[real]), "the patch must change the output"
    assert torch.equal(ours[real], expected[real])
    assert intervention.earliest_position.tolist() == [_gate(target, b) for b in range(2)]


def test_steer_equals_reference_and_generation(wrapped: Wrapped) -> None:
    _, target = _pair(wrapped)
    layer, scale = 1, 3.0
    vector = torch.randn(wrapped.model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    module = _decoder_layers(wrapped)[layer]

    def add_at_text(h: Tensor) -> Tensor:
        if h.shape[1] == target.layout.shape[1]:
            where = target.layout.mask("text")
        else:  # generation step: generated tokens are text
            where = torch.ones(h.shape[:2], dtype=torch.bool)
        return torch.where(where[..., None], h + scale * vector, h)

    with torch.no_grad():
        ours = wrapped.model.run_with_hooks(
            target, fwd_hooks=steer(target, vector, positions="text", layers=layer, scale=scale)
        )
        with _pre_hook(module, add_at_text):
            expected = wrapped.reference(**target.inputs).logits
            expected_tokens = wrapped.reference.generate(
                **target.inputs, max_new_tokens=3, do_sample=False
            )
    real = ~target.layout.mask("pad")
    assert torch.equal(ours[real], expected[real])
    tokens = wrapped.model.generate(
        target,
        max_new_tokens=3,
        fwd_hooks=steer(target, vector, positions="text", layers=layer, scale=scale),
    )
    assert torch.equal(tokens, expected_tokens)
    with torch.no_grad():
        zero = wrapped.model.run_with_hooks(
            target, fwd_hooks=steer(target, vector, layers=[0, 1], scale=0.0)
        )
        assert torch.equal(zero, wrapped.model(target))


@pytest.mark.parametrize("value", ["zero", "mean", "vector"])
def test_image_token_ablation_equals_hand_built_inputs_embeds(wrapped: Wrapped, value: str) -> None:
    batch = wrapped.batch(2)
    chosen = random_image_tokens(3, seed=[4, 5])
    fill = torch.full((wrapped.model.cfg.d_model,), 0.25) if value == "vector" else value
    with torch.no_grad():
        ours = wrapped.model.run_with_hooks(
            batch, fwd_hooks=ablate_image_tokens(batch, chosen, value=fill)
        )
        decoder_input = wrapped.reference(**batch.inputs, output_hidden_states=True).hidden_states[
            0
        ]
    embeds = decoder_input.clone()
    selected = chosen(batch.layout)
    for b in range(2):
        image_positions = [
            p for p in range(batch.layout.shape[1]) if "image" in batch.layout.roles_at(b, p)
        ]
        for p in selected[b].nonzero().flatten().tolist():
            if value == "zero":
                embeds[b, p] = 0.0
            elif value == "mean":
                embeds[b, p] = decoder_input[b, image_positions].mean(0)
            else:
                embeds[b, p] = 0.25
    kwargs = embeds_forward_kwargs(wrapped, batch.inputs)
    with torch.no_grad():
        expected = wrapped.reference(inputs_embeds=embeds, **kwargs).logits
    assert int(selected.sum()) == 6
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        assert not torch.equal(ours, wrapped.model(batch))


def test_patch_during_generation_equals_reference(wrapped: Wrapped) -> None:
    """The patch applies on the prompt pass; cached steps (new positions only) are left alone."""
    source, target = _pair(wrapped)
    layers = _decoder_layers(wrapped)
    recorded = record(wrapped.model, source, sites=[residual_site(1)])
    tokens = wrapped.model.generate(target, max_new_tokens=3, fwd_hooks=patch(recorded, target))
    src = _capture_inputs(wrapped, source, [layers[1]])[0]

    def edit(h: Tensor) -> Tensor:
        if h.shape[1] != target.layout.shape[1]:
            return h
        out = h.clone()
        for b in range(len(target)):
            out[b, _gate(target, b)] = src[b, _gate(source, b)]
        return out

    with _pre_hook(layers[1], edit), torch.no_grad():
        expected = wrapped.reference.generate(**target.inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(tokens, expected)

"""The ``hook_deepstack_embeds.{i}`` points (`vlm_lens.hooks.deepstack_embeds`): Qwen3-VL's
deepstack features of level ``i``, ``[batch, n_image_tokens, d_model]`` grouped per sequence.

Every expectation is computed by Hugging Face on the unwrapped deep copy: its own
``get_image_features`` output, and its decoder run with the ``deepstack_visual_embeds`` it
receives replaced by a plain forward pre-hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor

from tests.conftest import Wrapped, wrap, wrap_variant
from tests.contract._reference import hf_decoder_image_inputs
from vlm_lens import hooks
from vlm_lens.batch import Batch
from vlm_lens.interventions import record
from vlm_lens.testing import sample_image, tiny_variant


@pytest.fixture(scope="module")
def w() -> Wrapped:
    return wrap_variant(tiny_variant("qwen3_vl"))


def _levels(w: Wrapped) -> int:
    levels = w.model.adapter.deepstack_levels()
    assert levels == len(w.reference.config.vision_config.deepstack_visual_indexes) > 0
    return levels


def _two_prompts_three_images(w: Wrapped) -> Batch:
    """Prompt 0 holds two images, prompt 1 one (padded to the longer prompt)."""
    ph = w.model.image_placeholder
    two = w.tiny.prompt.replace(ph, f"{ph} and {ph}")
    images = [sample_image(seed=k, size=w.tiny.image_size) for k in range(3)]
    return w.model.prepare(images=[images[:2], images[2:]], text=[two, w.tiny.prompt + " more"])


def _hf_per_sequence(w: Wrapped, batch: Batch, groups: list[int]) -> list[list[Tensor]]:
    """HF's own ``get_image_features`` deepstack output, per level, each image's rows of a
    sequence concatenated (the sequences' image order is HF's scatter order)."""
    with torch.no_grad():
        out = w.reference.model.get_image_features(
            batch.inputs["pixel_values"], batch.inputs["image_grid_thw"], return_dict=True
        )
    per_level = []
    for level in out.deepstack_features:
        images = list(level)
        assert len(images) == sum(groups)
        starts = [sum(groups[:b]) for b in range(len(groups))]
        per_level.append(
            [torch.cat(images[s : s + g]) for s, g in zip(starts, groups, strict=True)]
        )
    return per_level


def test_deepstack_points_are_registered_for_qwen3_vl_only(w: Wrapped) -> None:
    names = [hooks.deepstack_embeds(i) for i in range(_levels(w))]
    assert all(name in w.model.hook_dict for name in names)
    assert set(names) <= set(w.model.hook_names())  # language-model hooks, not the tower's
    assert hooks.deepstack_embeds(_levels(w)) not in w.model.hook_dict
    other = wrap("qwen2_vl")
    assert other.model.adapter.deepstack_levels() == 0
    assert not [n for n in other.model.hook_dict if n.startswith(hooks.DEEPSTACK_EMBEDS)]
    assert not hasattr(
        other.model.adapter.image_features_owner(other.model.hf_model), "hook_deepstack_embeds"
    )


def test_cached_deepstack_equals_hf_get_image_features_per_sequence(w: Wrapped) -> None:
    """Cached level i = HF's ``get_image_features(...).deepstack_features[i]``, each sequence's
    images concatenated, zero-padded at the end; and equal to what HF's decoder adds at the
    image positions of that sequence."""
    batch = _two_prompts_three_images(w)
    groups = list(batch.layout.n_images)
    assert groups == [2, 1]
    names = [hooks.deepstack_embeds(i) for i in range(_levels(w))]
    with torch.no_grad():
        _, cache = w.model.run_with_cache(batch, names_filter=names)
    expected = _hf_per_sequence(w, batch, groups)
    extra = hf_decoder_image_inputs(w, batch.inputs)
    mask = extra["visual_pos_masks"]
    for level, name in enumerate(names):
        got = cache[name]
        longest = max(seq.shape[0] for seq in expected[level])
        assert got.shape == (2, longest, w.model.cfg.d_model)
        assert longest > min(seq.shape[0] for seq in expected[level])  # padding is exercised
        added = extra["deepstack_visual_embeds"][level]
        offset = 0
        for b, seq in enumerate(expected[level]):
            n = seq.shape[0]
            assert torch.equal(got[b, :n], seq)
            assert not got[b, n:].any()
            assert n == int(mask[b].sum())
            assert torch.equal(got[b, :n], added[offset : offset + n])
            offset += n


@contextmanager
def _hf_deepstack_edited(
    w: Wrapped, level: int, edit: Callable[[Tensor], Tensor]
) -> Iterator[None]:
    """HF's text decoder receives ``deepstack_visual_embeds`` with entry `level` edited."""
    text_model = w.reference.model.language_model

    def pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        embeds = list(kwargs["deepstack_visual_embeds"])
        embeds[level] = edit(embeds[level])
        return args, {**kwargs, "deepstack_visual_embeds": embeds}

    handle = text_model.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("label", "edit"), [("zero", torch.zeros_like), ("scale", lambda t: 2.0 * t - 1.0)]
)
def test_editing_a_level_matches_hf_with_that_level_edited(
    w: Wrapped, label: str, edit: Callable[[Tensor], Tensor]
) -> None:
    """Zeroing (ablating) or rescaling level i through its point gives the logits of the HF
    model whose decoder gets that level's deepstack embeds edited the same way."""
    batch = _two_prompts_three_images(w)
    with torch.no_grad():
        clean = w.reference(**batch.inputs).logits
        for level in range(_levels(w)):
            got = w.model.run_with_hooks(
                batch, fwd_hooks=[(hooks.deepstack_embeds(level), lambda t, hook: edit(t))]
            )
            with _hf_deepstack_edited(w, level, edit):
                expected = w.reference(**batch.inputs).logits
            assert torch.equal(got, expected), (label, level)
            assert not torch.equal(got, clean), (label, level)


def test_patching_a_level_from_another_run_matches_hf(w: Wrapped) -> None:
    """Level i cached on one image and written into a run on another equals HF's decoder
    getting the first run's deepstack embeds of level i."""
    source = w.batch(1)
    target = w.model.prepare(
        images=[sample_image(seed=7, size=w.tiny.image_size)], text=[w.tiny.prompt]
    )
    assert torch.equal(source.input_ids, target.input_ids)  # same grid, same positions
    name = hooks.deepstack_embeds(0)
    donor_embeds = hf_decoder_image_inputs(w, source.inputs)["deepstack_visual_embeds"][0]
    with torch.no_grad():
        _, cache = w.model.run_with_cache(source, names_filter=[name])
        got = w.model.run_with_hooks(target, fwd_hooks=[(name, lambda t, hook: cache[name])])
        with _hf_deepstack_edited(w, 0, lambda t: donor_embeds):
            expected = w.reference(**target.inputs).logits
    assert torch.equal(got, expected)
    assert not torch.equal(got, w.model(target))


def test_deepstack_hooks_do_not_leak_after_an_exception(w: Wrapped) -> None:
    batch = w.batch(2)
    name = hooks.deepstack_embeds(0)

    def boom(t: Tensor, hook: object) -> Tensor:
        raise RuntimeError("boom")

    with torch.no_grad():
        with pytest.raises(RuntimeError, match="boom"):
            w.model.run_with_hooks(batch, fwd_hooks=[(name, boom)])
        assert not w.model.hook_dict[name].fwd_hooks
        with pytest.raises(RuntimeError, match="boom"), w.model.hooks(fwd_hooks=[(name, boom)]):
            w.model(batch)
        assert not w.model.hook_dict[name].fwd_hooks
        assert torch.equal(w.model(batch), w.reference(**batch.inputs).logits)


def test_position_patching_refuses_deepstack_sites(w: Wrapped) -> None:
    """`record`/`patch` index sequence positions; a deepstack point has image-token rows."""
    with pytest.raises(ValueError, match="no \\[batch, pos"):
        record(w.model, w.batch(1), sites=[hooks.deepstack_embeds(0)])


def test_generation_with_a_zeroed_level_matches_hf_generate(w: Wrapped) -> None:
    """The point fires in generate's prompt pass: greedy tokens equal HF ``generate`` with that
    level's deepstack embeds zeroed (HF passes them only on the prompt pass)."""
    batch = w.batch(1)
    zero: Callable[[Tensor], Tensor] = torch.zeros_like
    got = w.model.generate(
        batch, max_new_tokens=5, fwd_hooks=[(hooks.deepstack_embeds(0), lambda t, hook: zero(t))]
    )
    text_model = w.reference.model.language_model

    def pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        embeds = kwargs.get("deepstack_visual_embeds")
        if embeds is not None:
            kwargs = {**kwargs, "deepstack_visual_embeds": [zero(embeds[0]), *embeds[1:]]}
        return args, kwargs

    with torch.no_grad():
        handle = text_model.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            expected = w.reference.generate(**batch.inputs, max_new_tokens=5, do_sample=False)
        finally:
            handle.remove()
        clean = w.reference.generate(**batch.inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(got, expected)
    assert not torch.equal(got, clean)

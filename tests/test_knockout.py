"""Knockout's own behaviour (renormalisation, earliest positions, seeding, refusals). Its
equality with hand-masked Hugging Face attention is part of the family contract:
tests/contract/test_knockout.py."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import Wrapped
from vlm_lens import VLMInputError, hooks
from vlm_lens.interventions import gate_knockout, knockout, last_layers, random_image_knockout


def test_mask_mode_rows_renormalise_and_zero_mode_does_not(wrapped: Wrapped) -> None:
    batch = wrapped.batch(1)
    layer = wrapped.model.cfg.n_layers - 1
    gate = int(batch.layout.positions("gate")[0][0])
    with torch.no_grad():
        _, clean = wrapped.model.run_with_cache(batch, names_filter=hooks.pattern(layer))
    lost = clean[hooks.pattern(layer)][0][:, gate + 1 :, gate]  # the gate's clean weight
    for mode in ("mask", "zero"):
        ko = gate_knockout(batch, layers=layer, mode=mode)
        with wrapped.model.hooks(fwd_hooks=ko), torch.no_grad():
            _, cache = wrapped.model.run_with_cache(batch, names_filter=hooks.pattern(layer))
        pattern = cache[hooks.pattern(layer)][0]
        assert torch.all(pattern[:, gate:, gate] == 0)
        row_sums = pattern[:, gate + 1 :].sum(-1)
        if mode == "mask":
            torch.testing.assert_close(row_sums, torch.ones_like(row_sums))
        else:  # the gate's weight is gone, not spread over the other keys
            torch.testing.assert_close(row_sums, 1 - lost)
            assert bool((lost > 1e-5).any()) and torch.all(row_sums[lost > 1e-5] < 1 - 1e-6)


def test_earliest_position_and_prefix_unchanged(wrapped: Wrapped) -> None:
    batch = wrapped.batch(2, padding_side="left")
    ko = gate_knockout(batch)
    gates = [int(p[0]) for p in batch.layout.positions("gate")]
    assert ko.earliest_position.tolist() == gates
    with torch.no_grad():
        clean = wrapped.model(batch)
        ours = wrapped.model.run_with_hooks(batch, fwd_hooks=ko)
    for b, g in enumerate(gates):
        real = ~batch.layout.mask("pad")[b, :g]
        assert torch.equal(ours[b, :g][real], clean[b, :g][real])
        assert not torch.equal(ours[b, g:], clean[b, g:])


def test_random_knockout_is_seeded(wrapped: Wrapped) -> None:
    batch = wrapped.batch(2, padding_side="left")
    a = random_image_knockout(batch, k=3, seed=1)
    b = random_image_knockout(batch, k=3, seed=1)
    c = random_image_knockout(batch, k=3, seed=2)
    with torch.no_grad():
        la = wrapped.model.run_with_hooks(batch, fwd_hooks=a)
        lb = wrapped.model.run_with_hooks(batch, fwd_hooks=b)
        lc = wrapped.model.run_with_hooks(batch, fwd_hooks=c)
    assert torch.equal(la, lb)
    assert not torch.equal(la, lc)


def test_mask_mode_refuses_rows_with_no_key_left(wrapped: Wrapped) -> None:
    batch = wrapped.batch(1)
    with pytest.raises(ValueError, match="mode='zero'"):
        knockout(batch, queries="all", keys="all", layers=0)
    knockout(batch, queries="all", keys="all", layers=0, mode="zero")


def test_knockout_on_another_batch_raises(wrapped: Wrapped) -> None:
    one, two = wrapped.batch(1), wrapped.batch(2)
    with pytest.raises(VLMInputError, match="build the knockout from the batch you run"):
        wrapped.model.run_with_hooks(two, fwd_hooks=gate_knockout(one))
    assert not any(hp.fwd_hooks for hp in wrapped.model.hook_dict.values())


@pytest.mark.bad_input_types
def test_bad_arguments() -> None:
    from vlm_lens.layout import TokenLayout, TokenSpec

    layout = TokenLayout.from_input_ids(
        torch.tensor([[1, 9, 9, 5, 6]]), TokenSpec(image_token_ids=frozenset({9}))
    )
    with pytest.raises(ValueError, match="mode must be"):
        knockout(layout, queries="all", keys="gate", mode="softmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown role"):
        knockout(layout, queries="all", keys="eoi")
    with pytest.raises(ValueError, match="window"):
        last_layers(4, 5)

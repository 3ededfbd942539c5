"""Patching, steering and image-token ablation: identities, broadcasting, refusals and earliest
positions. Their equality with Hugging Face computations is part of the family contract:
tests/contract/test_patching_steering.py."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import Wrapped
from tests.contract.test_patching_steering import _pair
from vlm_lens import VLMInputError, hooks
from vlm_lens.batch import attention_of
from vlm_lens.interventions import (
    ablate_image_tokens,
    attention_input_sites,
    mean_activation,
    patch,
    record,
    residual_site,
    steer,
    steering_vector,
)
from vlm_lens.testing import sample_image


def _gate(batch, b: int) -> int:
    roles = [batch.layout.roles_at(b, p) for p in range(batch.layout.shape[1])]
    gates = [p for p, r in enumerate(roles) if "gate" in r]
    assert len(gates) == 1
    return gates[0]


@pytest.mark.parametrize("site", ["residual", "attention", "z"])
def test_patching_a_run_into_itself_changes_nothing(wrapped: Wrapped, site: str) -> None:
    _, target = _pair(wrapped)
    n_layers = wrapped.model.cfg.n_layers
    sites = {
        "residual": [residual_site(1)],
        "attention": attention_input_sites(0, n_layers),
        "z": [hooks.z(0)],
    }[site]
    source = record(wrapped.model, target, sites=sites, positions=["image", "gate"])
    with torch.no_grad():
        clean = wrapped.model(target)
        patched = wrapped.model.run_with_hooks(target, fwd_hooks=patch(source, target))
    assert torch.equal(patched, clean)


def test_one_source_broadcasts_and_mismatches_raise(wrapped: Wrapped) -> None:
    source, target = _pair(wrapped)
    one = wrapped.model.prepare(
        images=sample_image(seed=10, size=wrapped.tiny.image_size), text=wrapped.tiny.prompt
    )
    rec = record(wrapped.model, one, sites=[residual_site(1)])
    with torch.no_grad():
        wrapped.model.run_with_hooks(target, fwd_hooks=patch(rec, target))
    with pytest.raises(VLMInputError, match="position"):
        rec_image = record(wrapped.model, source, sites=[residual_site(1)], positions="image")
        patch(rec_image, target, positions="gate")
    with pytest.raises(ValueError, match="no \\[batch, pos"):
        record(wrapped.model, source, sites=[hooks.pattern(0)])
    with pytest.raises(KeyError, match="does not exist"):
        record(wrapped.model, source, sites=["blocks.0.hook_nothing"])


def test_steering_vector_is_a_difference_of_means(wrapped: Wrapped) -> None:
    a, b = _pair(wrapped)
    layer = 1
    vector = steering_vector(wrapped.model, [a], [b], positions="gate", layer=layer)
    names = hooks.resid_pre(layer)
    with torch.no_grad():
        _, ca = wrapped.model.run_with_cache(a, names_filter=names)
        _, cb = wrapped.model.run_with_cache(b, names_filter=names)
    mean_a = torch.stack([ca[names][i, _gate(a, i)] for i in range(2)]).double().mean(0)
    mean_b = torch.stack([cb[names][i, _gate(b, i)] for i in range(2)]).double().mean(0)
    torch.testing.assert_close(vector, (mean_a - mean_b).float(), rtol=0, atol=1e-6)
    image_mean = mean_activation(wrapped.model, [a], positions="image", layer=layer)
    image = ca[names][a.layout.mask("image")].double().mean(0).float()
    torch.testing.assert_close(image_mean, image, rtol=0, atol=1e-6)


def test_image_ablation_refuses_non_image_positions(wrapped: Wrapped) -> None:
    batch = wrapped.batch(1)
    with pytest.raises(VLMInputError, match="not an image token"):
        ablate_image_tokens(batch, "gate")


def test_earliest_positions_of_steering_and_ablation(wrapped: Wrapped) -> None:
    batch = wrapped.batch(2, padding_side="left")
    vector = torch.ones(wrapped.model.cfg.d_model)
    reach = attention_of(batch).earliest_affected  # a bidirectional block's start (PaliGemma)
    gates = reach(torch.tensor([_gate(batch, b) for b in range(2)])).tolist()
    assert steer(batch, vector, layers=0).earliest_position.tolist() == gates
    first_image = reach(torch.tensor([int(p[0]) for p in batch.layout.positions("image")]))
    assert ablate_image_tokens(batch).earliest_position.tolist() == first_image.tolist()
    length = batch.layout.shape[1]
    generated_only = steer(batch, vector, positions=[], layers=0)
    assert generated_only.earliest_position.tolist() == [length, length]

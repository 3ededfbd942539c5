"""A result's ``meta["model"]["weights_digest"]`` covers every weight value, hashed once.

Two models that differ in one value anywhere get different digests; the digest of a model
whose tensors did not move is served from the cache (no rehash), and every tracked change
(an in-place edit, a replaced tensor, an edit of the first values through ``.data``) rehashes.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vlm_lens.analysis import provenance
from vlm_lens.data.digest import weights_digests


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def count(module: nn.Module) -> dict[str, str]:
        calls.append(1)
        return weights_digests(module)

    monkeypatch.setattr(provenance, "weights_digests", count)
    return calls


def test_every_value_counts_and_the_cache_follows_edits(counted: list[int]) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 300), nn.LayerNorm(300))
    first = provenance.weights_digest(model)
    assert provenance.weights_digest(model) == first and len(counted) == 1  # cached

    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin[0].weight[-1, -1] += 1e-3  # far past any sample of the first values
    assert provenance.weights_digest(twin) != first

    with torch.no_grad():  # an in-place edit bumps the version counter: rehashed
        model[0].weight[200, 17] += 1e-3
    edited = provenance.weights_digest(model)
    assert edited != first and len(counted) == 3

    model[0].weight.data[0, 0] += 1.0  # through .data: no counter, but in the first values
    assert provenance.weights_digest(model) not in (first, edited) and len(counted) == 4

    model[1].weight = nn.Parameter(model[1].weight.detach().clone())  # same values, new tensor
    again = provenance.weights_digest(model)
    assert len(counted) == 5 and again == provenance.weights_digest(model) and len(counted) == 5

    provenance.forget_weights_digest(model)
    assert provenance.weights_digest(model) == again and len(counted) == 6


def test_meta_tensors_digest_their_shapes() -> None:
    with torch.device("meta"):
        model = nn.Linear(4, 2)
    digest = provenance.weights_digest(model)
    with torch.device("meta"):
        other = nn.Linear(4, 3)
    assert digest != provenance.weights_digest(other)

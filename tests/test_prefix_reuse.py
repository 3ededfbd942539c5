"""Prefix reuse: bad prefixes raise and restore the cache; layer windows. That reused passes
equal the naive full runs is part of the family contract: tests/contract/test_prefix_reuse.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import Wrapped

from tests.contract._reference import no_prefix_reuse_at_gate
from vlm_lens import VLMInputError
from vlm_lens.analysis import knockout_sweep
from vlm_lens.interventions import (
    knockout,
    last_layers,
    steer,
)


def _gate(batch) -> int:
    return min(int(p[0]) for p in batch.layout.positions("gate"))


def _image(w: Wrapped, seed: int):
    from vlm_lens.testing import sample_image

    return sample_image(seed=seed, size=w.tiny.image_size)


def test_bad_prefix_raises_and_restores(both: dict[str, Wrapped]) -> None:
    w = both["eager"]
    batch = w.batch(1)
    if no_prefix_reuse_at_gate(w, batch):
        return
    first_image = int(batch.layout.positions("image")[0][0])
    with pytest.raises(VLMInputError, match="every image token"):
        w.model.prefix_cache(batch, upto=first_image + 1)
    with pytest.raises(VLMInputError, match="at least one position"):
        w.model.prefix_cache(batch, upto=batch.input_ids.shape[1])
    gate = _gate(batch)
    prefix = w.model.prefix_cache(batch, upto=gate + 1)
    early = steer(batch, torch.ones(w.model.cfg.d_model), positions="gate", layers=0)
    with pytest.raises(VLMInputError, match="inside the cached prefix"):
        w.model.run_suffix(prefix, fwd_hooks=early)
    assert prefix.past_key_values.get_seq_length() == gate + 1
    assert not any(h._forward_hooks or h.fwd_hooks for h in w.model.hook_dict.values())
    late = knockout(batch, queries="last", keys="gate", layers=[0])
    with torch.no_grad():
        ok = w.model.run_suffix(prefix, fwd_hooks=late)
        full = w.model.run_with_hooks(batch, fwd_hooks=late)
    assert torch.equal(ok, full[:, gate + 1 :])


def test_last_layers_windows(both: dict[str, Wrapped]) -> None:
    w = both["eager"]
    n = w.model.cfg.n_layers
    result = knockout_sweep(w.model, w.batch(1), windows=[1, [0]])
    assert result.windows == (tuple(last_layers(n, 1)), (0,))
    assert result.to_frame().shape[0] == 2

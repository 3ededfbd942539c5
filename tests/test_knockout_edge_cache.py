"""Knockouts built on one batch share their resolved edges, and the cache lets the batch go.

A layer-window sweep builds one knockout per window on the same batch; each used to rebuild
the ``[pos, pos]`` visibility and edge masks. They are now resolved once per (batch, blocked
positions), compared by value, and dropped with the batch's layout.
"""

from __future__ import annotations

import gc
import importlib

import torch

from vlm_lens import HookedVLM
from vlm_lens.interventions import gate_knockout, knockout, last_layers
from vlm_lens.positions import after
from vlm_lens.testing import build_tiny, sample_image

# the module (the package exports its function `knockout` under the same name)
knockout_module = importlib.import_module("vlm_lens.interventions.knockout")


def _batch():
    tiny = build_tiny("chameleon")
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    return model, model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)


def test_windows_share_one_edge_set_and_it_leaves_with_the_batch() -> None:
    model, batch = _batch()
    key = id(batch.layout)
    windows = [gate_knockout(batch, layers=last_layers(model.cfg.n_layers, w)) for w in (1, 2)]
    closures = [knockout(batch, queries=after("text", "gate"), keys="image") for _ in range(2)]
    shared = knockout_module._EDGE_SETS[key]
    sets = [v for k, v in shared.items() if k != ("visible",)]
    assert len(sets) == 2  # the gate knockouts' and the two closures' (equal by value)
    assert shared[("visible",)][0] is batch.attention  # one visibility mask for both
    assert all(torch.equal(w.earliest_position, windows[0].earliest_position) for w in windows)
    assert torch.equal(closures[0].earliest_position, closures[1].earliest_position)

    # the shared edges give the knockouts' own results: equal to a cache-free rebuild
    with torch.no_grad():
        cached = model.run_with_hooks(batch, fwd_hooks=windows[1])
        knockout_module._EDGE_SETS.pop(key)
        fresh = model.run_with_hooks(
            batch, fwd_hooks=gate_knockout(batch, layers=last_layers(model.cfg.n_layers, 2))
        )
    assert torch.equal(cached, fresh)

    del windows, closures, sets, shared, cached, fresh, batch
    gc.collect()
    assert key not in knockout_module._EDGE_SETS

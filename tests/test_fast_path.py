"""The fast attention path: which routes make a layer eager, and `from_hf` keeping the chosen
implementation. SDPA parity with HF SDPA (every variant, fp32 and bf16, padded both sides), the
one-eager-layer parity and SDPA generation are part of the family contract (tests/contract/).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from conftest import PRIMARY, Wrapped, wrap_variant

from vlm_lens import hooks
from vlm_lens.engine.attention import DispatchingAttention
from vlm_lens.interventions import gate_knockout


@pytest.fixture(scope="module", params=PRIMARY, ids=[v.name for v in PRIMARY])
def sdpa(request: pytest.FixtureRequest) -> Wrapped:
    """One model per family with SDPA everywhere (its HF reference stays eager)."""
    w = wrap_variant(request.param)
    w.model.set_attn_implementation("sdpa")
    return w


@contextmanager
def _paths(w: Wrapped) -> Iterator[list[tuple[int, bool]]]:
    """Record (layer, ran eager) for every decoder attention call."""
    record: list[tuple[int, bool]] = []
    handles = []
    for i, block in enumerate(w.model.bridge.blocks):
        attn = block.attn
        assert isinstance(attn, DispatchingAttention)

        def note(module: Any, args: Any, kwargs: Any, i: int = i) -> None:
            record.append((i, module.needs_eager(**kwargs)))

        handles.append(attn.register_forward_pre_hook(note, with_kwargs=True))
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


def test_what_attached_means(sdpa: Wrapped) -> None:
    """Every route that puts a hook on hook_attn_scores/hook_pattern makes that layer eager
    for that call only, except mask-mode knockout hooks alone; other hooks (residual caches,
    q/k rows) keep it fused."""
    w = sdpa
    batch = w.batch(1)

    def noop(tensor: torch.Tensor, hook: Any) -> None:
        return None

    def eager_layers(record: list[tuple[int, bool]]) -> set[int]:
        return {layer for layer, eager in record if eager}

    with torch.no_grad():
        with _paths(w) as rec:
            w.model.run_with_cache(batch, names_filter=hooks.lm_filter("resid_post", "hook_q"))
        assert eager_layers(rec) == set() and len(rec) == 2
        with _paths(w) as rec:
            w.model.run_with_cache(batch, names_filter=lambda n: n.endswith("0.attn.hook_pattern"))
        assert eager_layers(rec) == {0}
        with _paths(w) as rec:
            w.model.run_with_cache(batch)  # names_filter=None caches every pattern
        assert eager_layers(rec) == {0, 1}
        with _paths(w) as rec:
            w.model.run_with_hooks(batch, fwd_hooks=gate_knockout(batch, layers=[1], mode="zero"))
        assert eager_layers(rec) == {1}
        with _paths(w) as rec:  # mask-mode knockout: fused, its edges leave the SDPA mask
            w.model.run_with_hooks(batch, fwd_hooks=gate_knockout(batch, layers=[1]))
        assert eager_layers(rec) == set()
        with _paths(w) as rec:  # ... unless something else reads that layer's scores
            mixed = [*gate_knockout(batch, layers=[0, 1]), (hooks.attn_scores(1), noop)]
            w.model.run_with_hooks(batch, fwd_hooks=mixed)
        assert eager_layers(rec) == {1}
        with _paths(w) as rec, w.model.hooks(fwd_hooks=[(hooks.attn_scores(0), noop)]):
            w.model(batch)
        assert eager_layers(rec) == {0}
        with _paths(w) as rec:
            w.model.generate(batch, max_new_tokens=3, fwd_hooks=[(hooks.pattern(1), noop)])
        assert eager_layers(rec) == {1} and len(rec) == 2 * 3
        with _paths(w) as rec:
            w.model(batch)
        assert eager_layers(rec) == set()


def test_hooks_after_an_exception_do_not_keep_layers_eager(sdpa: Wrapped) -> None:
    batch = sdpa.batch(1)

    def boom(tensor: torch.Tensor, hook: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sdpa.model.run_with_hooks(batch, fwd_hooks=[(hooks.pattern(0), boom)])
    with _paths(sdpa) as rec, torch.no_grad():
        sdpa.model(batch)
    assert not any(eager for _, eager in rec)


def test_from_hf_keeps_the_chosen_implementation() -> None:
    """TransformerLens forces eager while bridging; from_hf restores the model's choice."""
    from vlm_lens import HookedVLM
    from vlm_lens.testing import build_tiny

    tiny = build_tiny("llava")
    tiny.model.set_attn_implementation({"text_config": "sdpa", "vision_config": "eager"})
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    config = model.hf_model.config
    assert model.attn_implementation == "sdpa"
    assert config.vision_config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="unknown attention implementation"):
        model.set_attn_implementation("fast")

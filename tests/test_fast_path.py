"""The fast attention path: SDPA logits equal HF SDPA; eager wherever a score/pattern hook is.

References are deep copies of the HF model taken before wrapping (`conftest.wrap`), switched to
the same attention implementation with Hugging Face's own ``set_attn_implementation``. For a
single eager layer inside an SDPA model the reference gives that HF layer an eager config and
the additive mask HF eager builds (captured from an all-eager reference run).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from conftest import FAMILY_VARIANTS, VARIANTS, Wrapped, wrap

from vlm_lens import hooks
from vlm_lens.engine.attention import DispatchingAttention
from vlm_lens.interventions import gate_knockout

CASES = [(1, None), (2, "left"), (2, "right")]


def _text_only(impl: str, config: Any) -> Any:
    return {"text_config": impl} if hasattr(config, "text_config") else impl


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    inner = model.model
    lm = getattr(inner, "language_model", None) or getattr(inner, "text_model", None) or inner
    return list(lm.layers)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_sdpa_logits_equal_hf_sdpa(variant: tuple, dtype: torch.dtype) -> None:
    """With SDPA and no attention hooks, logits are torch.equal to the HF model with SDPA,
    single prompts and padded batches (left and right); eager stays equal to eager."""
    _, family, kwargs = variant
    w = wrap(family, dtype=dtype, **kwargs)
    w.model.set_attn_implementation("sdpa")
    sdpa_ref = copy.deepcopy(w.reference)
    sdpa_ref.set_attn_implementation("sdpa")
    assert w.model.attn_implementation == "sdpa"
    for n, side in CASES:
        batch = w.batch(n, padding_side=side) if side else w.batch(n)
        with torch.no_grad():
            ours = w.model(batch)
            cached, cache = w.model.run_with_cache(
                batch, names_filter=hooks.lm_filter("resid_post")
            )
            assert torch.equal(ours, sdpa_ref(**batch.inputs).logits), (n, side)
            assert torch.equal(cached, ours)
            ref_hidden = sdpa_ref(**batch.inputs, output_hidden_states=True).hidden_states
            assert torch.equal(cache[hooks.resid_post(0)], ref_hidden[1])
    w.model.set_attn_implementation("eager")
    batch = w.batch(2, padding_side="left")
    with torch.no_grad():
        assert torch.equal(w.model(batch), w.reference(**batch.inputs).logits)


@pytest.fixture(scope="module", params=FAMILY_VARIANTS, ids=[v[0] for v in FAMILY_VARIANTS])
def sdpa(request: pytest.FixtureRequest) -> Wrapped:
    """One model per family with SDPA everywhere (its HF reference stays eager)."""
    _, family, kwargs = request.param
    w = wrap(family, **kwargs)
    w.model.set_attn_implementation("sdpa")
    return w


def _mixed_reference(w: Wrapped, eager_layers: set[int], batch: Any) -> torch.nn.Module:
    """HF model with SDPA except `eager_layers`, which run HF eager on HF's eager mask."""
    eager_ref = copy.deepcopy(w.reference)
    eager_ref.set_attn_implementation(_text_only("eager", eager_ref.config))
    eager_ref.set_attn_implementation(
        {"vision_config": "sdpa"} if hasattr(eager_ref.config, "vision_config") else {}
    )
    masks: dict[int, Any] = {}
    handles = []
    for i, layer in enumerate(_decoder_layers(eager_ref)):

        def grab(module: Any, args: Any, kwargs: Any, i: int = i) -> None:
            masks[i] = kwargs.get("attention_mask")

        handles.append(layer.self_attn.register_forward_pre_hook(grab, with_kwargs=True))
    with torch.no_grad():
        eager_ref(**batch.inputs)
    for h in handles:
        h.remove()
    mixed = copy.deepcopy(w.reference)
    mixed.set_attn_implementation("sdpa")
    for i, layer in enumerate(_decoder_layers(mixed)):
        if i not in eager_layers:
            continue
        attn = layer.self_attn
        attn.config = copy.copy(attn.config)
        attn.config._attn_implementation_internal = "eager"

        def swap(module: Any, args: Any, kwargs: Any, i: int = i) -> tuple:
            return args, {**kwargs, "attention_mask": masks[i]}

        attn.register_forward_pre_hook(swap, with_kwargs=True)
    return mixed


@pytest.mark.parametrize("case", CASES, ids=["single", "left", "right"])
def test_pattern_hook_makes_only_its_layer_eager(sdpa: Wrapped, case: tuple) -> None:
    """A read-only hook on layer 0's pattern (run_with_hooks) or layer 1's scores
    (run_with_cache names_filter): that layer runs exact HF eager, the other SDPA."""
    n, side = case
    batch = sdpa.batch(n, padding_side=side) if side else sdpa.batch(n)
    seen: dict[str, torch.Tensor] = {}

    def keep(tensor: torch.Tensor, hook: Any) -> None:
        seen[hook.name] = tensor.clone()

    with torch.no_grad():
        ours = sdpa.model.run_with_hooks(batch, fwd_hooks=[(hooks.pattern(0), keep)])
        expected = _mixed_reference(sdpa, {0}, batch)(**batch.inputs, output_attentions=True)
        assert torch.equal(ours, expected.logits)
        assert torch.equal(seen["blocks.0.attn.hook_pattern"], expected.attentions[0])
        logits, cache = sdpa.model.run_with_cache(batch, names_filter=hooks.attn_scores(1))
        assert torch.equal(logits, _mixed_reference(sdpa, {1}, batch)(**batch.inputs).logits)
        assert hooks.attn_scores(1) in cache
        all_eager = _mixed_reference(sdpa, {0, 1}, batch)(**batch.inputs).logits
        logits, _ = sdpa.model.run_with_cache(batch, names_filter=hooks.lm_filter("hook_pattern"))
        assert torch.equal(logits, all_eager)
        sdpa_ref = copy.deepcopy(sdpa.reference)
        sdpa_ref.set_attn_implementation("sdpa")
        assert torch.equal(sdpa.model(batch), sdpa_ref(**batch.inputs).logits)  # hooks gone


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


def test_generate_with_sdpa_equals_hf_sdpa_generate(sdpa: Wrapped) -> None:
    """Cached generation runs the fused path on every step (the KV cache goes through the
    same update); greedy tokens equal HF SDPA generate's."""
    batch = sdpa.batch(2, padding_side="left")
    ref = copy.deepcopy(sdpa.reference)
    ref.set_attn_implementation("sdpa")
    with torch.no_grad():
        ours = sdpa.model.generate(batch, max_new_tokens=5)
        theirs = ref.generate(**batch.inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(ours, theirs)

"""The exact-eager path inside an SDPA model, for each family's primary variant: one
score/pattern hook makes exactly its layer HF eager; the query rows computed from
hook_rot_q/hook_rot_k equal HF eager's while every layer stays fused.

The reference is a deep copy of the HF model on SDPA whose hooked layer gets an eager config and
the additive mask HF eager builds (captured from an all-eager reference run).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from tests.conftest import PRIMARY, Wrapped, wrap_variant
from vlm_lens import Batch, hooks
from vlm_lens.batch import attention_of
from vlm_lens.engine.attention_rows import pattern_rows

CASES = [(1, None), (2, "left"), (2, "right")]


def _text_only(impl: str, config: Any) -> Any:
    return {"text_config": impl} if hasattr(config, "text_config") else impl


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    inner = model.model
    lm = getattr(inner, "language_model", None) or getattr(inner, "text_model", None) or inner
    return list(lm.layers)


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


@pytest.fixture(scope="module", params=PRIMARY, ids=[v.name for v in PRIMARY])
def sdpa(request: pytest.FixtureRequest) -> Wrapped:
    """Each family's primary variant with SDPA everywhere (its HF reference stays eager)."""
    w = wrap_variant(request.param)
    w.model.set_attn_implementation("sdpa")
    return w


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


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("case", ["single", "left", "right"])
def test_pattern_rows_equal_hf_eager_attentions(sdpa: Wrapped, case: str, impl: str) -> None:
    """The rows computed from hook_rot_q/hook_rot_k equal those rows of the HF eager
    reference's output_attentions: torch.equal in every layer of the eager model, and while
    the model runs SDPA (every layer fused) torch.equal in layer 0 (same input) and to float
    rounding after it (SDPA's layer outputs differ from eager's in the last bits)."""
    batch = sdpa.batch(1) if case == "single" else sdpa.batch(2, padding_side=case)
    with torch.no_grad():
        attentions = sdpa.reference(**batch.inputs, output_attentions=True).attentions
    model = copy.deepcopy(sdpa.model)
    model.set_attn_implementation("eager")  # then the language model only: the tower stays eager
    config = model.hf_model.config
    model.set_attn_implementation({"text_config": impl} if hasattr(config, "text_config") else impl)
    rows = query_rows_of(batch)
    blocks = attention_of(batch).block_ids  # PaliGemma's prefix, Gemma 3's images
    seen: dict[int, list[torch.Tensor]] = {}
    fused: list[bool] = []

    def capture(layer: int) -> Any:
        scaling, window = model.attention_scaling(layer), model.attention_window(layer)
        kept: dict[str, torch.Tensor] = {}

        def keep_q(q: torch.Tensor, hook: Any) -> None:
            kept["q"] = q
            fused.append(not model.bridge.blocks[layer].attn.needs_eager())

        def rows_from_k(k: torch.Tensor, hook: Any) -> None:
            n = k.shape[1]
            valid = ~batch.layout.mask("pad")
            out = []
            for b, r in enumerate(rows):
                # HF: ((causal & window) | same bidirectional block) & not padding
                visible = torch.arange(n)[None] <= r[:, None]
                if window is not None:
                    visible &= torch.arange(n)[None] > r[:, None] - window
                ids = blocks[b]
                visible |= (ids[r][:, None] == ids[None, :]) & (ids[r][:, None] >= 0)
                visible &= valid[b][None]
                out.append(pattern_rows(kept["q"][b, r], k[b], visible, scaling))
            seen[layer] = out

        return [(hooks.rot_q(layer), keep_q), (hooks.rot_k(layer), rows_from_k)]

    fwd_hooks = [h for layer in range(model.cfg.n_layers) for h in capture(layer)]
    with torch.no_grad():
        model.run_with_hooks(batch, fwd_hooks=fwd_hooks)
    assert len(seen) == model.cfg.n_layers
    if impl == "sdpa":
        assert fused and all(fused), "a row hook forced a layer to the eager path"
    for layer, per_seq in seen.items():
        for b, r in enumerate(rows):
            expected = attentions[layer][b][:, r]
            if impl == "eager" or layer == 0:
                assert torch.equal(per_seq[b], expected), (layer, b)
            else:
                torch.testing.assert_close(per_seq[b], expected, rtol=1.3e-6, atol=1e-5)


def query_rows_of(batch: Batch) -> list[torch.Tensor]:
    from vlm_lens.engine.attention_rows import query_rows
    from vlm_lens.positions import after

    return query_rows(after("text", "gate"), batch.layout)

"""Stacked suffix passes (`vlm_lens.engine.suffix_stack`), for the registered variants: several
conditions per pass, each from the first layer it hooks, equal one `run_suffix` per condition
and the naive full runs.

Eager attention: `torch.equal`. SDPA: float32's default tolerance (the fused kernel tiles by the
stacked batch and query length; a group runs a layer eager when one of its conditions edits that
layer's scores), with equal top tokens.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.conftest import PRIMARY, Wrapped, wrap_variant
from tests.contract._reference import no_prefix_reuse_at_gate
from vlm_lens import hooks as hook_names
from vlm_lens.engine.suffix_stack import (
    _decoder_owner,
    layers_can_be_skipped,
    run_suffixes,
)
from vlm_lens.interventions import gate_knockout, knockout, steer
from vlm_lens.interventions.patching import attention_input_sites, patch, record, residual_site
from vlm_lens.positions import after
from vlm_lens.testing import TinyVariant, sample_image


def _pair(w: Wrapped) -> tuple[Any, Any]:
    size = w.tiny.image_size
    target = w.model.prepare(
        images=[sample_image(seed=s, size=size) for s in (5, 6)],
        text=[w.tiny.prompt] * 2,
        padding_side="right",
    )
    source = w.model.prepare(
        images=[sample_image(seed=s, size=size) for s in (3, 4)],
        text=[w.tiny.prompt] * 2,
        padding_side="right",
    )
    return source, target


def _conditions(w: Wrapped, source: Any, target: Any) -> list[Any]:
    """Knockouts (scores and pattern), patches (residual, attention input), steering, a
    filter-named hook, a final-norm hook and a hook that edits in place: every kind of hook a
    sweep stacks, starting at layers 0 .. n_layers."""
    n = w.model.cfg.n_layers
    sites = [residual_site(layer) for layer in range(n)] + attention_input_sites(0, n)
    recorded = record(w.model, source, sites=sites, positions="gate")
    vector = torch.randn(w.model.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def halve_in_place(tensor: torch.Tensor, hook: Any) -> None:  # noqa: ARG001
        tensor[:, -1].mul_(0.5).add_(1.0)  # not only a scale: the final RMSNorm undoes that

    def scale_final(tensor: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001
        return tensor * 1.5

    return [
        *(gate_knockout(target, layers=[layer]) for layer in range(n)),
        gate_knockout(target, layers=range(n), mode="zero"),
        *(patch(recorded, target, sites=[residual_site(layer)]) for layer in range(n)),
        patch(recorded, target, sites=attention_input_sites(1, n)),
        steer(target, vector, positions=after("text", "gate"), layers=[1], scale=2.0),
        knockout(target, queries="last", keys="gate"),  # a filter over every layer
        [(hook_names.FINAL_NORM, scale_final)],
        [(hook_names.resid_post(n - 1), halve_in_place)],
    ]


def _check(a: torch.Tensor, b: torch.Tensor, impl: str, atol: float = 1e-5) -> None:
    if impl == "eager":
        assert torch.equal(a, b), (a - b).abs().max()
    else:
        torch.testing.assert_close(a, b, rtol=1.3e-6, atol=atol)
        assert torch.equal(a[:, -1].argmax(-1), b[:, -1].argmax(-1))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("per_pass", [1, 3, "auto"])
def test_stacked_equals_one_pass_per_condition_and_full_runs(
    both: dict[str, Wrapped], impl: str, per_pass: int | str
) -> None:
    w = both[impl]
    source, target = _pair(w)
    if no_prefix_reuse_at_gate(w, target):
        return
    conditions = _conditions(w, source, target)
    upto = min(c.earliest for c in conditions if hasattr(c, "earliest"))
    prefix = w.model.prefix_cache(target, upto=upto)
    cached = [(layer.keys.clone(), layer.values.clone()) for layer in prefix.past_key_values.layers]
    runs = run_suffixes(w.model, prefix, conditions, per_pass=per_pass)
    n = w.model.cfg.n_layers
    first = (*range(n), 0, *range(n), 1, 1, 0, n, n - 1)
    if not layers_can_be_skipped(_decoder_owner(w.model)):  # Gemma 3: [sliding, full] layers
        first = (0,) * len(first)
    assert runs.first_layers == first
    with torch.no_grad():
        clean_full = w.model(target)[:, upto:]
        # SDPA: at least 1e-5, or twice the model's own clean eager/SDPA gap (Gemma 3's is larger)
        gap = float((both["eager"].model(target)[:, upto:] - clean_full).abs().max())
        atol = max(1e-5, 2 * gap)
        for hooks, stacked in zip(conditions, runs.logits, strict=True):
            single = w.model.run_suffix(prefix, fwd_hooks=hooks)
            full = w.model.run_with_hooks(target, fwd_hooks=hooks)[:, upto:]
            _check(stacked, single, impl, atol)
            _check(stacked, full, impl, atol)
    _check(runs.clean, clean_full, impl, atol)
    # the prefix cache is untouched, and nothing is left hooked
    for layer, (keys, values) in zip(prefix.past_key_values.layers, cached, strict=True):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    assert not any(h._forward_hooks or h.fwd_hooks for h in w.model.hook_dict.values())


def test_conditions_change_the_output(both: dict[str, Wrapped]) -> None:
    """The equalities above are not vacuous: every condition but the patch at layer 0 (the
    gate's layer-0 input is its token embedding in both images) moves some logit. A readout
    keeps only what it returns."""
    w = both["eager"]
    source, target = _pair(w)
    if no_prefix_reuse_at_gate(w, target):
        return
    conditions = _conditions(w, source, target)
    prefix = w.model.prefix_cache(target, upto=min(c.earliest for c in conditions[:3]))
    runs = run_suffixes(w.model, prefix, conditions, per_pass="auto")
    changed = [not torch.equal(logits, runs.clean) for logits in runs.logits]
    n = w.model.cfg.n_layers
    assert changed == [i != n + 1 for i in range(len(conditions))]
    last = run_suffixes(w.model, prefix, conditions, readout=lambda logits: logits[:, -1].clone())
    assert torch.equal(last.clean, runs.clean[:, -1])
    assert all(torch.equal(a, b[:, -1]) for a, b in zip(last.logits, runs.logits, strict=True))


def test_every_variant_stacked_equals_one_pass_per_condition(variant: Wrapped) -> None:
    """Every registered variant (sliding-window backbones included), eager, four conditions per
    pass: stacked passes equal one `run_suffix` per condition, bit for bit."""
    source, target = _pair(variant)
    if no_prefix_reuse_at_gate(variant, target):
        return
    conditions = _conditions(variant, source, target)
    prefix = variant.model.prefix_cache(target, upto=min(c.earliest for c in conditions[:3]))
    runs = run_suffixes(variant.model, prefix, conditions, per_pass=4)
    with torch.no_grad():
        for hooks, stacked in zip(conditions, runs.logits, strict=True):
            assert torch.equal(stacked, variant.model.run_suffix(prefix, fwd_hooks=hooks))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("registered", PRIMARY, ids=[v.name for v in PRIMARY])
def test_stacked_in_bfloat16(registered: TinyVariant, impl: str) -> None:
    """bf16: stacked passes equal one pass per condition and the naive full runs (eager bit
    for bit; SDPA to about one bf16 ulp, with equal top tokens)."""
    w = wrap_variant(registered, dtype=torch.bfloat16)
    w.model.set_attn_implementation(impl)
    source, target = _pair(w)
    if no_prefix_reuse_at_gate(w, target):
        return
    n = w.model.cfg.n_layers
    recorded = record(w.model, source, sites=[residual_site(i) for i in range(n)])
    conditions = [gate_knockout(target, layers=[i]) for i in range(n)]
    conditions += [patch(recorded, target, sites=[residual_site(i)]) for i in range(n)]
    prefix = w.model.prefix_cache(target, upto=conditions[0].earliest)
    runs = run_suffixes(w.model, prefix, conditions, per_pass=4)
    assert runs.clean.dtype == torch.bfloat16
    with torch.no_grad():
        for hooks, stacked in zip(conditions, runs.logits, strict=True):
            single = w.model.run_suffix(prefix, fwd_hooks=hooks)
            full = w.model.run_with_hooks(target, fwd_hooks=hooks)[:, prefix.upto :]
            for other in (single, full):
                if impl == "eager":
                    assert torch.equal(stacked, other)
                else:  # SDPA tiles by query length: up to an ulp of logits near 4 (2**-5)
                    torch.testing.assert_close(stacked, other, rtol=1.6e-2, atol=2**-4)
                    assert torch.equal(stacked[:, -1].argmax(-1), other[:, -1].argmax(-1))

"""Stacked suffix passes (`vlm_lens.engine.suffix_stack`): skipped layers do not run, bad stacks
raise and leave nothing hooked, `plan_passes` against a brute-force search, the memory-driven
width, and the layer-skipping rule on sliding-window backbones. That stacked passes equal one
pass per condition and the naive full runs is part of the family contract:
tests/contract/test_stacked_passes.py.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import torch
from conftest import Wrapped, wrap
from torch import nn

from tests.contract._reference import no_prefix_reuse_at_gate
from tests.contract.test_stacked_passes import _conditions, _pair
from vlm_lens import VLMInputError
from vlm_lens import hooks as hook_names
from vlm_lens.engine.suffix_stack import (
    _decoder_owner,
    first_layer,
    layers_can_be_skipped,
    plan_passes,
    run_suffixes,
)
from vlm_lens.interventions import gate_knockout


def _brute_force_cost(starts: list[int], n_layers: int, width: int, cost: float) -> float:
    """The cheapest split of sorted `starts` into consecutive passes, by enumerating every
    composition (2 ** (n - 1) of them)."""
    n = len(starts)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0, *[i + 1 for i, cut in enumerate(cuts) if cut], n]
        passes = list(itertools.pairwise(bounds))
        if any(b - a > width for a, b in passes):
            continue
        best = min(best, sum((n_layers - starts[a]) * (cost + b - a) for a, b in passes))
    return best


def test_layers_below_a_group_do_not_run(both: dict[str, Wrapped]) -> None:
    """Conditions that start at layer 1, one per pass: block 0 runs only for the clean run
    (which records the residual stream they start from), block 1 for all three; stacked, the
    results are the same."""
    w = both["eager"]
    source, target = _pair(w)
    if no_prefix_reuse_at_gate(w, target):
        return
    conditions = [gate_knockout(target, layers=[1]), gate_knockout(target, layers=[1], mode="zero")]
    prefix = w.model.prefix_cache(target, upto=conditions[0].earliest)
    rows: dict[int, list[int]] = {0: [], 1: []}
    handles = [
        w.model.bridge.blocks[i].register_forward_pre_hook(
            lambda module, args, i=i: rows[i].append(int(args[0].shape[0]))
        )
        for i in rows
    ]
    try:
        runs = run_suffixes(w.model, prefix, conditions, per_pass=1)
    finally:
        for handle in handles:
            handle.remove()
    # a decoder with mixed layer types (Gemma 3: sliding, full) picks masks by layer index,
    # so its passes cannot start past layer 0
    skips = layers_can_be_skipped(_decoder_owner(w.model))
    assert runs.passes == 3 and runs.first_layers == ((1, 1) if skips else (0, 0))
    assert rows == {0: [len(target)] * (1 if skips else 3), 1: [len(target)] * 3}
    stacked = run_suffixes(w.model, prefix, conditions, per_pass=3)
    with torch.no_grad():
        for hooks, one, wide in zip(conditions, runs.logits, stacked.logits, strict=True):
            single = w.model.run_suffix(prefix, fwd_hooks=hooks)
            assert torch.equal(one, single) and torch.equal(wide, single)
    assert torch.equal(runs.clean, stacked.clean)


def test_first_layer_reads_hook_names() -> None:
    names = ["blocks.0.attn.hook_pattern", "blocks.3.attn.hook_pattern", "blocks.3.hook_in"]
    assert first_layer([], names, 4) == 4
    assert first_layer([(hook_names.resid_pre(2), print)], names, 4) == 2
    assert first_layer([(hook_names.UNEMBED, print), (hook_names.FINAL_NORM, print)], names, 4) == 4
    assert first_layer([(hook_names.IMAGE_EMBEDS, print)], names, 4) == 0
    assert first_layer([(hook_names.lm_filter("hook_pattern"), print)], names, 4) == 0
    assert first_layer([(lambda n: n.startswith("blocks.3."), print)], names, 4) == 3


def test_bad_stacks_raise_and_leave_nothing_behind(both: dict[str, Wrapped]) -> None:
    w = both["eager"]
    _, target = _pair(w)
    if no_prefix_reuse_at_gate(w, target):
        return
    ko = gate_knockout(target, layers=[1])
    prefix = w.model.prefix_cache(target, upto=ko.earliest)
    with pytest.raises(VLMInputError, match="per_pass must be at least 1"):
        run_suffixes(w.model, prefix, [ko], per_pass=0)
    rotary = [name for name in w.model.hook_dict if name.endswith("hook_cos")]
    if rotary:
        with torch.no_grad():
            _, cache = w.model.run_with_cache(w.batch(2), names_filter=rotary[-1])
    # broadcast [1, pos, d] tensors cannot be split by condition (multi-axis rotary ones are
    # [batch, pos, d], per sequence: they can)
    if rotary and cache[rotary[-1]].shape[0] == 1:
        bad = [(rotary[-1], lambda tensor, hook: tensor)]
        with pytest.raises(VLMInputError, match="per_pass=1"):
            run_suffixes(w.model, prefix, [ko, bad], per_pass=2)

    def boom(tensor: torch.Tensor, hook: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_suffixes(w.model, prefix, [ko, [(hook_names.resid_pre(1), boom)]], per_pass=2)
    assert not any(h._forward_hooks or h.fwd_hooks for h in w.model.hook_dict.values())
    assert list(_decoder_owner(w.model)._modules["layers"]) == list(w.model.bridge.blocks)
    assert prefix.past_key_values.get_seq_length() == ko.earliest


@pytest.mark.parametrize("seed", range(20))
def test_plan_passes_is_the_cheapest_split(seed: int) -> None:
    gen = random.Random(seed)
    n_layers, n = gen.randint(1, 12), gen.randint(1, 9)
    starts = sorted(gen.randint(0, n_layers) for _ in range(n))
    width, cost = gen.randint(1, 5), gen.choice([0.0, 0.5, 2.0, 8.0])
    passes = plan_passes(starts, n_layers, width, cost)
    assert [a for a, _ in passes] == [0, *[b for _, b in passes[:-1]]] and passes[-1][1] == n
    assert all(0 < b - a <= width for a, b in passes)
    ours = sum((n_layers - starts[a]) * (cost + b - a) for a, b in passes)
    assert ours == pytest.approx(_brute_force_cost(starts, n_layers, width, cost))


def test_conditions_per_pass_follows_free_memory(
    both: dict[str, Wrapped], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 when nothing fits, the cap when everything does, and in between proportional to the
    free memory (twice the memory, twice the conditions, up to rounding)."""
    import vlm_lens.engine.suffix_stack as stack

    w = both["eager"]
    _, target = _pair(w)
    if no_prefix_reuse_at_gate(w, target):
        return
    prefix = w.model.prefix_cache(target, upto=gate_knockout(target).earliest)

    def with_memory(free: int) -> int:
        monkeypatch.setattr(stack, "available_memory", lambda device: free)
        return stack.conditions_per_pass(w.model, prefix, maximum=1000)

    assert with_memory(0) == 1
    assert with_memory(2**50) == 1000
    one = next(m for m in (2**k for k in range(10, 40)) if with_memory(m) >= 8)
    assert abs(with_memory(2 * one) - 2 * with_memory(one)) <= 1


@pytest.mark.parametrize("backbone", ["mistral", "qwen2"])
def test_sliding_window_backbones(backbone: str) -> None:
    """LLaVA on Mistral and Qwen2 (sliding-window configs): a decoder whose layers differ in
    attention type is never entered mid-way (that the stacked passes equal one pass per
    condition is checked on every variant in tests/contract/test_stacked_passes.py)."""
    w = wrap("llava", text_backbone=backbone)
    source, target = _pair(w)
    conditions = _conditions(w, source, target)
    prefix = w.model.prefix_cache(target, upto=min(c.earliest for c in conditions[:3]))
    runs = run_suffixes(w.model, prefix, conditions, per_pass=4)  # equal: tests/contract
    decoder = _decoder_owner(w.model)
    assert layers_can_be_skipped(decoder) == (max(runs.first_layers) > 0)
    types = getattr(decoder.config, "layer_types", None)
    assert layers_can_be_skipped(decoder) == (types is None or len(set(types)) == 1)

    class Mixed(nn.Module):
        config = type("Config", (), {"layer_types": ["full_attention", "sliding_attention"]})

    assert not layers_can_be_skipped(Mixed())

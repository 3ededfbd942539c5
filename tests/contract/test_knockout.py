"""Knockout against an independent computation, for each family's primary variant: Hugging Face
eager attention, patched to apply a hand-built 4-D mask (``mode="mask"``) or to zero weights
after the softmax (``mode="zero"``); under SDPA, HF's boolean mask with the edges removed.

The reference never uses vlm_lens' hooks: the blocked edges are written here, by loops over the
positions of each role, into the attention of a deep copy of the HF model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor, nn

from tests.conftest import Wrapped
from vlm_lens.interventions import (
    gate_knockout,
    image_to_text_knockout,
    knockout,
    last_layers,
)
from vlm_lens.positions import image_token

# blocked(b, q, k, layer, head) for absolute query/key positions; gen_q/gen_k for generated tokens
EdgeFn = Callable[[int, int, int], bool]


def _roles(batch, b: int) -> list[tuple[str, ...]]:
    length = batch.layout.shape[1]
    return [batch.layout.roles_at(b, p) for p in range(length)]


def _hand_edges(batch, query_ok: Callable, key_ok: Callable) -> Callable[[int, int, int], bool]:
    """Edge predicate over absolute positions; positions past the prompt are generated text.

    It does not say which keys a query sees: HF's own mask does (causal, or PaliGemma's
    bidirectional prefix), and blocking an edge HF already masks changes nothing, so every
    (query, key) pair of the roles is blocked, later keys included."""
    length = batch.layout.shape[1]
    roles = [_roles(batch, b) for b in range(len(batch))]

    def role_of(b: int, p: int) -> tuple[str, ...]:
        return roles[b][p] if p < length else ("text", "generated")

    def blocked(b: int, q: int, k: int) -> bool:
        return query_ok(b, q, role_of(b, q)) and key_ok(b, k, role_of(b, k))

    return blocked


def _reference_eager(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    blocked: Tensor,
    mode: str,
) -> tuple[Tensor, Tensor]:
    """HF's eager attention written out, with the knockout applied by hand."""
    n_rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)
    value = value.repeat_interleave(n_rep, dim=1)
    q_len, k_len = query.shape[2], key.shape[2]
    if attention_mask is None:
        causal = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
        attention_mask = torch.zeros(q_len, k_len).masked_fill(
            ~causal, torch.finfo(query.dtype).min
        )
        attention_mask = attention_mask[None, None].to(query.dtype)
    mask = attention_mask[:, :, :, :k_len].expand(query.shape[0], query.shape[1], -1, -1).clone()
    if mode == "mask":
        mask[blocked] = torch.finfo(query.dtype).min
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling + mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    if mode == "zero":
        weights = weights.masked_fill(blocked, 0.0)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


@contextmanager
def hand_knockout(
    w: Wrapped, edge: EdgeFn, layers: set[int], heads: set[int] | None, mode: str
) -> Iterator[None]:
    """Patch every eager attention function of the reference model's decoder."""
    modules = {
        type(m).__module__
        for m in w.reference.modules()
        if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")
    }
    originals = {}

    def patched(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        if not hasattr(module, "layer_idx"):  # an image-tokenizer attention
            original = originals[type(module).__module__]
            return original(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
        b_n, h_n, q_len, k_len = query.shape[0], query.shape[1], query.shape[2], key.shape[2]
        blocked = torch.zeros(b_n, h_n, q_len, k_len, dtype=torch.bool)
        if module.layer_idx in layers:
            for b in range(b_n):
                for qi in range(q_len):
                    q_abs = k_len - q_len + qi
                    for k in range(k_len):
                        if edge(b, q_abs, k):
                            for h in range(h_n):
                                if heads is None or h in heads:
                                    blocked[b, h, qi, k] = True
        return _reference_eager(module, query, key, value, attention_mask, scaling, blocked, mode)

    for name in modules:
        mod = importlib.import_module(name)
        originals[name] = mod.eager_attention_forward
        mod.eager_attention_forward = patched
    try:
        yield
    finally:
        for name, fn in originals.items():
            importlib.import_module(name).eager_attention_forward = fn


def _reference_logits(w: Wrapped, batch) -> Tensor:
    with torch.no_grad():
        return w.reference(**batch.inputs).logits


def _conditions(n_layers: int):
    """(id, build(batch, mode), query_ok, key_ok, layers, heads)."""
    every = set(range(n_layers))
    image_side = ("image_start", "image", "image_row_end")
    return [
        (
            "gate",
            lambda batch, mode: gate_knockout(batch, mode=mode),
            lambda b, p, r: "pad" not in r,
            lambda b, p, r: "gate" in r,
            every,
            None,
        ),
        (
            "image-to-text",
            lambda batch, mode: image_to_text_knockout(batch, layers=[n_layers - 1], mode=mode),
            "text-after-image",
            lambda b, p, r: any(x in r for x in image_side),
            {n_layers - 1},
            None,
        ),
        (
            "last-image-token-head-1",
            lambda batch, mode: knockout(
                batch,
                queries="all",
                keys=image_token(-1),
                layers=last_layers(n_layers, 1),
                heads=1,
                mode=mode,
            ),
            lambda b, p, r: "pad" not in r,
            "last-image-token",
            {n_layers - 1},
            {1},
        ),
    ]


def _last_image(batch, b: int) -> int:
    length = batch.layout.shape[1]
    return max(p for p in range(length) if "image" in batch.layout.roles_at(b, p))


def _resolve(batch, pred):
    """Turn the string shortcuts of `_conditions` into hand-written predicates."""
    last_image = {b: _last_image(batch, b) for b in range(len(batch))}
    if pred == "text-after-image":
        return lambda b, p, r: "text" in r and p > last_image[b]
    if pred == "last-image-token":
        return lambda b, p, r: p == last_image[b]
    return pred


@pytest.mark.parametrize("mode", ["mask", "zero"])
@pytest.mark.parametrize("condition", [0, 1, 2], ids=["gate", "image-to-text", "last-image-head"])
def test_knockout_equals_hand_masked_hf(wrapped: Wrapped, mode: str, condition: int) -> None:
    batch = wrapped.batch(2, padding_side="left")
    name, build, q_ok, k_ok, layers, heads = _conditions(wrapped.model.cfg.n_layers)[condition]
    ko = build(batch, mode)
    edge = _hand_edges(batch, _resolve(batch, q_ok), _resolve(batch, k_ok))
    with torch.no_grad():
        ours = wrapped.model.run_with_hooks(batch, fwd_hooks=ko)
    with hand_knockout(wrapped, edge, layers, heads, mode):
        expected = _reference_logits(wrapped, batch)
    clean = _reference_logits(wrapped, batch)
    real = ~batch.layout.mask("pad")
    assert not torch.equal(expected[real], clean[real]), f"{name}: knockout must change logits"
    assert torch.equal(ours[real], expected[real])


@contextmanager
def hand_sdpa_knockout(w: Wrapped, edge: EdgeFn, layers: set[int], heads: set[int] | None):
    """Make HF's SDPA attention of the reference decoder drop the blocked edges from its
    boolean mask (the causal triangle when HF passes none), by hand."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    original = ALL_ATTENTION_FUNCTIONS._global_mapping["sdpa"]

    def patched(module, query, key, value, attention_mask, *args, **kwargs):
        if getattr(module, "layer_idx", None) in layers and hasattr(module, "num_key_value_groups"):
            b_n, h_n, q_len, k_len = query.shape[0], query.shape[1], query.shape[2], key.shape[2]
            if attention_mask is None:
                causal = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
                attention_mask = causal[None, None]
            allowed = attention_mask[..., :k_len].expand(b_n, h_n, q_len, k_len).clone()
            for b in range(b_n):
                for qi in range(q_len):
                    for k in range(k_len):
                        if edge(b, k_len - q_len + qi, k):
                            for h in range(h_n):
                                if heads is None or h in heads:
                                    allowed[b, h, qi, k] = False
            attention_mask = allowed
        return original(module, query, key, value, attention_mask, *args, **kwargs)

    ALL_ATTENTION_FUNCTIONS._global_mapping["sdpa"] = patched
    try:
        yield
    finally:
        ALL_ATTENTION_FUNCTIONS._global_mapping["sdpa"] = original


@pytest.mark.parametrize("condition", [0, 1, 2], ids=["gate", "image-to-text", "last-image-head"])
def test_mask_knockout_under_sdpa_equals_hand_masked_hf_sdpa(
    wrapped: Wrapped, condition: int
) -> None:
    """Under SDPA a mask-mode knockout keeps its layers fused: bit-equal to HF's SDPA with the
    blocked edges removed from the boolean mask by hand, and close to the eager knockout."""
    batch = wrapped.batch(2, padding_side="left")
    name, build, q_ok, k_ok, layers, heads = _conditions(wrapped.model.cfg.n_layers)[condition]
    ko = build(batch, "mask")
    edge = _hand_edges(batch, _resolve(batch, q_ok), _resolve(batch, k_ok))
    real = ~batch.layout.mask("pad")
    with torch.no_grad():
        eager = wrapped.model.run_with_hooks(batch, fwd_hooks=ko)
    clean_eager = _reference_logits(wrapped, batch)
    wrapped.model.set_attn_implementation("sdpa")
    wrapped.reference.set_attn_implementation("sdpa")
    try:
        with torch.no_grad():
            ours = wrapped.model.run_with_hooks(batch, fwd_hooks=ko)
        with hand_sdpa_knockout(wrapped, edge, layers, heads):
            expected = _reference_logits(wrapped, batch)
        clean = _reference_logits(wrapped, batch)
    finally:
        wrapped.model.set_attn_implementation("eager")
        wrapped.reference.set_attn_implementation("eager")
    assert not torch.equal(expected[real], clean[real]), f"{name}: knockout must change logits"
    assert torch.equal(ours[real], expected[real])
    # as close to the eager knockout as HF's SDPA is to HF's eager without one
    drift = float((clean - clean_eager)[real].abs().max())
    torch.testing.assert_close(ours[real], eager[real], rtol=1e-5, atol=max(1e-5, 2 * drift))


def test_knockout_during_cached_generation(wrapped: Wrapped) -> None:
    """Cached generation with the gate knocked out equals HF generate with the hand mask, and
    (families without other per-token inputs) the last step's logits equal an uncached knockout
    forward over the whole generated sequence, which a clean forward does not match."""
    batch = wrapped.batch(1)
    ko = gate_knockout(batch)
    steps = {"max_new_tokens": 4, "min_new_tokens": 4}  # a tiny model may write EOS early
    tokens = wrapped.model.generate(batch, fwd_hooks=ko, **steps)
    edge = _hand_edges(batch, lambda b, p, r: "pad" not in r, lambda b, p, r: "gate" in r)
    every = set(range(wrapped.model.cfg.n_layers))
    with hand_knockout(wrapped, edge, every, None, "mask"), torch.no_grad():
        expected = wrapped.reference.generate(**batch.inputs, do_sample=False, **steps)
    assert torch.equal(tokens, expected)
    clean = wrapped.model.generate(batch, **steps)
    assert clean.shape == tokens.shape
    # the last step's logits (computed on the cache) against one uncached HF forward over the
    # sequence it read, the gate's edges blocked for every query; families whose prompts carry
    # per-token inputs besides the ids and mask (token_type_ids, mm_token_type_ids) would need
    # them extended for the generated tokens, which only HF's generate knows how to do: there
    # the token check above stands alone
    length = batch.input_ids.shape[1]
    per_token = [
        k
        for k, v in batch.inputs.items()
        if k not in ("input_ids", "attention_mask")
        and isinstance(v, Tensor)
        and v.ndim == 2
        and v.shape[1] == length
    ]
    if per_token:
        return
    steps_logits: list[Tensor] = []  # each generate step's last logits, from the HF module
    handle = wrapped.model.hf_model.register_forward_hook(
        lambda _m, _a, output: steps_logits.append(output.logits[:, -1].detach().clone())
    )
    try:
        again = wrapped.model.generate(batch, fwd_hooks=ko, **steps)
    finally:
        handle.remove()
    assert torch.equal(again, tokens) and len(steps_logits) == steps["max_new_tokens"]
    last = steps_logits[-1]
    read = tokens[:, :-1]
    inputs = dict(batch.inputs)
    inputs["input_ids"] = read
    mask = batch.inputs.get("attention_mask")
    if mask is not None:
        inputs["attention_mask"] = torch.cat(
            [mask, mask.new_ones(mask.shape[0], read.shape[1] - length)], dim=1
        )
    with hand_knockout(wrapped, edge, every, None, "mask"), torch.no_grad():
        uncached = wrapped.reference(**inputs).logits[:, -1]
    assert not torch.allclose(last, _last_clean(wrapped, inputs))
    torch.testing.assert_close(last, uncached, rtol=1e-4, atol=1e-4)


def _last_clean(wrapped: Wrapped, inputs: dict) -> Tensor:
    """The last logits of a clean (no knockout) HF forward on `inputs`."""
    with torch.no_grad():
        return wrapped.reference(**inputs).logits[:, -1]

"""Prefix reuse, for each family's primary variant: suffix passes on a cached clean prefix
(`prefix_cache`/`run_suffix`, `run_sweep` and the sweeps built on it) equal the naive full runs.

Eager attention: `torch.equal` on logits and on every sweep result. SDPA: PyTorch's fused CPU
kernel tiles queries and keys by the query length, so a shorter query block can split a row's
online softmax into different key blocks; those tests use float32's default tolerance
(``rtol=1.3e-6, atol=1e-5``) and check that predictions agree.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import Wrapped

from tests.contract._reference import no_prefix_reuse_at_gate
from tests.contract._scenarios import images_for
from vlm_lens import VLMInputError
from vlm_lens.analysis import PatchPair, knockout_sweep, patching_sweep, run_sweep
from vlm_lens.engine.prefix import image_positions_end, reusable_from
from vlm_lens.interventions import (
    ablate_image_tokens,
    gate_knockout,
    image_to_text_knockout,
    steer,
)
from vlm_lens.positions import after


def _gate(batch) -> int:
    return min(int(p[0]) for p in batch.layout.positions("gate"))


def _same(a: torch.Tensor, b: torch.Tensor, impl: str) -> None:
    if impl == "eager":
        assert torch.equal(a, b), (a - b).abs().max()
    else:
        torch.testing.assert_close(a, b, rtol=1.3e-6, atol=1e-5)


def _image(w: Wrapped, seed: int):
    from vlm_lens.testing import sample_image

    return sample_image(seed=seed, size=w.tiny.image_size)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("n_prompts", [1, 2])
def test_suffix_logits_equal_full_run(both: dict[str, Wrapped], impl: str, n_prompts: int) -> None:
    """Positions upto.. of a suffix pass equal those of a full forward, for a knockout too, and
    the cache is restored between passes (the same pass twice gives the same logits)."""
    w = both[impl]
    batch = w.batch(n_prompts, padding_side="right")
    if no_prefix_reuse_at_gate(w, batch):
        return
    upto = _gate(batch)
    ko = image_to_text_knockout(batch, layers=[0])
    with torch.no_grad():
        full = w.model(batch)
        full_ko = w.model.run_with_hooks(batch, fwd_hooks=ko)
        prefix = w.model.prefix_cache(batch, upto=upto)
        first = w.model.run_suffix(prefix)
        knocked = w.model.run_suffix(prefix, fwd_hooks=ko)
        again = w.model.run_suffix(prefix)
    assert first.shape[1] == prefix.suffix_length == batch.input_ids.shape[1] - upto
    assert torch.equal(first, again)
    _same(first, full[:, upto:], impl)
    _same(knocked, full_ko[:, upto:], impl)
    assert prefix.past_key_values.get_seq_length() == upto


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_prefix_after_two_images_equals_hf_full_forward(
    both: dict[str, Wrapped], impl: str
) -> None:
    """Two images apart in one prompt. Every `upto` before the end of the last image (between
    the two included) is refused: the prefix pass encodes the images, and the suffix pass gets
    no image inputs, so with Gemma 3 the second image's bidirectional block would run causal.
    From the end of the images on, suffix logits equal the HF reference's own full forward on
    the processor's inputs (``token_type_ids`` included): the cached image keys carry the
    prefix pass's attention structure, Gemma 3's blocks both ways."""
    w = both[impl]
    ph = w.model.image_placeholder
    text = f"First {ph} then {ph} and now tell me what differs between the two of them"
    batch = w.model.prepare(images=[images_for(w, 2)], text=[text])
    ids, length = batch.input_ids, batch.input_ids.shape[1]
    start = reusable_from(batch)
    # the refused range covers every image token HF sees (placeholder ids, not the layout)
    placeholder = getattr(w.tiny.tokenizer, "image_token_id", None)
    if placeholder is not None and bool((ids == placeholder).any()):
        assert image_positions_end(batch) >= int((ids == placeholder).nonzero()[:, 1].max()) + 1
    first_image = int(batch.layout.positions("image")[0][0])
    for upto in range(first_image, start):
        with pytest.raises(VLMInputError, match="every image token|bidirectional"):
            w.model.prefix_cache(batch, upto=upto)
    reference = copy.deepcopy(w.reference)
    reference.set_attn_implementation(impl)
    with torch.no_grad():
        expected = reference(**batch.inputs).logits
        last_gate = int(batch.layout.positions("gate")[0].max())
        for upto in sorted({start, max(start, last_gate), (start + length) // 2}):
            if upto >= length - 2:
                continue
            prefix = w.model.prefix_cache(batch, upto=upto)
            _same(w.model.run_suffix(prefix), expected[:, upto:], impl)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_knockout_window_sweep_equals_full_runs(both: dict[str, Wrapped], impl: str) -> None:
    w = both[impl]
    batch = w.batch(2, padding_side="right")
    for kwargs in ({}, {"mode": "zero"}):
        fast = knockout_sweep(w.model, batch, **kwargs)
        slow = knockout_sweep(w.model, batch, reuse_prefix=False, **kwargs)
        assert fast.windows == slow.windows == ((1,), (0, 1))
        assert (fast.tokens == slow.tokens).all() and (fast.clean_tokens == slow.clean_tokens).all()
        _same(torch.tensor(fast.clean_token_logprob), torch.tensor(slow.clean_token_logprob), impl)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("site", ["residual", "attention"])
def test_gate_patching_sweep_equals_full_runs(
    both: dict[str, Wrapped], impl: str, site: str
) -> None:
    """Gate patching at every layer: the reused-prefix sweep equals per-layer full runs."""
    w = both[impl]
    source = w.model.prepare(images=[_image(w, 3), _image(w, 4)], text=[w.tiny.prompt] * 2)
    target = w.model.prepare(images=[_image(w, 5), _image(w, 6)], text=[w.tiny.prompt] * 2)
    pair = PatchPair(source, target, source_token=5, target_token=6)
    fast = patching_sweep(w.model, pair, site=site)
    slow = patching_sweep(w.model, pair, site=site, reuse_prefix=False)
    assert (fast.flip_rate == slow.flip_rate).all()
    for a, b in ((fast.d_clean, slow.d_clean), (fast.d_patched, slow.d_patched)):
        _same(torch.tensor(a), torch.tensor(b), impl)
    _same(torch.tensor(fast.similarity_per_pair), torch.tensor(slow.similarity_per_pair), impl)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_steering_sweep_equals_full_runs(both: dict[str, Wrapped], impl: str) -> None:
    w = both[impl]
    batch = w.batch(2, padding_side="right")
    vector = torch.randn(w.model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    conditions = {
        f"gate@{layer}": steer(batch, vector, positions="gate", layers=layer, scale=3.0)
        for layer in range(w.model.cfg.n_layers)
    }
    conditions["text"] = steer(batch, vector, positions=after("text", "gate"), layers=[0, 1])
    fast = run_sweep(w.model, batch, conditions)
    slow = run_sweep(w.model, batch, conditions, reuse_prefix=False)
    reused = None if no_prefix_reuse_at_gate(w, batch) else _gate(batch)
    assert fast.upto == reused and slow.upto is None
    for name in ("clean", *conditions):
        _same(fast.logits[name], slow.logits[name], impl)


def test_conditions_that_cannot_reuse_run_in_full(both: dict[str, Wrapped]) -> None:
    """Image ablation (changes image positions) and plain hook lists run in full; their
    results equal run_with_hooks."""
    w = both["eager"]
    batch = w.batch(1)
    ablation = ablate_image_tokens(batch, "image")
    plain = list(gate_knockout(batch, layers=[1]))  # a plain list: earliest unknown
    conditions = {"ablate": ablation, "plain": plain, "ko": gate_knockout(batch, layers=[1])}
    result = run_sweep(w.model, batch, conditions)
    if no_prefix_reuse_at_gate(w, batch):  # the gate knockout reaches position 0 too
        assert result.full_runs == ("ablate", "plain", "ko") and result.upto is None
    else:
        assert result.full_runs == ("ablate", "plain")
        assert result.upto == _gate(batch)
    last = batch.layout.mask("last")
    with torch.no_grad():
        for name in ("ablate", "plain"):
            full = w.model.run_with_hooks(batch, fwd_hooks=conditions[name])[last]
            assert torch.equal(result.logits[name], full)
    assert torch.equal(result.logits["plain"], result.logits["ko"])

"""Generation, for every registered variant: greedy tokens equal Hugging Face ``generate`` with
eager attention and with SDPA (cached steps on the fused path), and hooks fire on every step."""

from __future__ import annotations

import torch

from tests.conftest import Wrapped
from tests.contract._reference import on_sdpa
from vlm_lens import hooks


def test_generate_matches_hf(variant: Wrapped) -> None:
    batch = variant.batch(2)
    ours = variant.model.generate(batch, max_new_tokens=5)
    with torch.no_grad():
        theirs = variant.reference.generate(**batch.inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(ours, theirs)


def test_generate_with_sdpa_equals_hf_sdpa_generate(variant: Wrapped) -> None:
    """Cached generation runs the fused path on every step (the KV cache goes through the
    same update); greedy tokens equal HF SDPA generate's."""
    batch = variant.batch(2, padding_side="left")
    with on_sdpa(variant) as reference, torch.no_grad():
        ours = variant.model.generate(batch, max_new_tokens=5)
        theirs = (reference or variant.reference).generate(  # None: HF refuses SDPA, eager
            **batch.inputs, max_new_tokens=5, do_sample=False
        )
    assert torch.equal(ours, theirs)


def test_generate_hooks_fire_every_step(variant: Wrapped) -> None:
    batch = variant.batch(1)
    query_lengths: list[int] = []
    tokens = variant.model.generate(  # min_new_tokens: a tiny model may write EOS early
        batch,
        max_new_tokens=4,
        min_new_tokens=4,
        fwd_hooks=[(hooks.pattern(0), lambda t, hook: query_lengths.append(t.shape[-2]))],
    )
    assert tokens.shape[1] == batch.input_ids.shape[1] + 4
    assert query_lengths == [batch.input_ids.shape[1], 1, 1, 1]

"""Independent references the contract checks compare against: the plain Hugging Face copy of a
wrapped model, switched or hooked with plain PyTorch and Hugging Face APIs only."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from tests.conftest import Wrapped
from vlm_lens.batch import Batch
from vlm_lens.engine.prefix import reusable_from
from vlm_lens.errors import VLMInputError


@contextmanager
def on_sdpa(w: Wrapped) -> Iterator[torch.nn.Module | None]:
    """The wrapped model on SDPA for the block (eager again after it), and an HF copy of the
    reference switched to SDPA with Hugging Face's own ``set_attn_implementation``.

    Where Hugging Face refuses SDPA for the model (PaliGemma 2: Gemma 2 soft-caps its scores),
    vlm_lens must refuse it the same way and keep running eager; the block then gets ``None``.
    """
    reference = copy.deepcopy(w.reference)
    try:
        reference.set_attn_implementation("sdpa")
    except ValueError as refusal:
        with pytest.raises(ValueError) as ours:
            w.model.set_attn_implementation("sdpa")
        assert str(ours.value) == str(refusal)
        assert w.model.attn_implementation == "eager"
        yield None
        return
    w.model.set_attn_implementation("sdpa")
    try:
        yield reference
    finally:
        w.model.set_attn_implementation("eager")


def embeds_forward_kwargs(w: Wrapped, inputs: dict) -> dict:
    """The other inputs of a hand-built ``inputs_embeds`` forward of the HF reference: the clean
    run's inputs less the ids and pixels, plus, where the HF model computes multi-axis rotary
    positions from the ids (Qwen-VL's ``get_rope_index``), those positions from HF's own method
    (an ``inputs_embeds``-only forward cannot recompute them)."""
    kwargs = {
        k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "image_sizes")
    }
    rope_index = getattr(getattr(w.reference, "model", None), "get_rope_index", None)
    if rope_index is not None and "image_grid_thw" in inputs:
        kwargs["position_ids"], _ = rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs.get("attention_mask"),
        )
    return kwargs


def no_prefix_reuse_at_gate(w: Wrapped, batch: Batch) -> bool:
    """Whether no prefix ending at the gate is reusable, because the gate sits inside a
    bidirectional block that runs past it (PaliGemma: the whole prompt is HF's bidirectional
    prefix, so every position depends on the gate); then vlm_lens must refuse that prefix,
    naming the block. The gate-based reuse checks then have nothing to reuse: suffix reuse
    after such a block is checked with a causal suffix in the family's own tests."""
    gate = min(int(p[0]) for p in batch.layout.positions("gate"))
    if reusable_from(batch) <= gate:
        return False
    with pytest.raises(VLMInputError, match="bidirectional attention block"):
        w.model.prefix_cache(batch, upto=gate)
    return True

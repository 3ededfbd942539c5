"""Independent references the contract checks compare against: the plain Hugging Face copy of a
wrapped model, switched or hooked with plain PyTorch and Hugging Face APIs only."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tests.conftest import Wrapped


@contextmanager
def on_sdpa(w: Wrapped) -> Iterator[torch.nn.Module]:
    """The wrapped model on SDPA for the block (eager again after it), and an HF copy of the
    reference switched to SDPA with Hugging Face's own ``set_attn_implementation``."""
    reference = copy.deepcopy(w.reference)
    reference.set_attn_implementation("sdpa")
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

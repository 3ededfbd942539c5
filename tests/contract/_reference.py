"""Independent references the contract checks compare against: the plain Hugging Face copy of a
wrapped model, switched or hooked with plain PyTorch and Hugging Face APIs only."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

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


DECODER_IMAGE_INPUTS = ("visual_pos_masks", "deepstack_visual_embeds")
"""Arguments of a Hugging Face text decoder's forward that carry image information besides
``inputs_embeds``: Qwen3-VL's deepstack (features added to the hidden states at the image
positions after each of its first decoder layers). HF passes them only when it encodes the
image itself, so a hand-built ``inputs_embeds`` forward takes them from HF's own clean run."""


def _image_input_decoders(w: Wrapped) -> list[torch.nn.Module]:
    """The modules of the HF reference whose forward takes a `DECODER_IMAGE_INPUTS` argument."""
    found = []
    for module in w.reference.modules():
        try:
            params = inspect.signature(module.forward).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            continue
        if any(name in params for name in DECODER_IMAGE_INPUTS):
            found.append(module)
    return found


def hf_decoder_image_inputs(w: Wrapped, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The `DECODER_IMAGE_INPUTS` the HF reference's decoder receives in a clean run of
    `inputs` (plain forward pre-hooks); empty for families without them."""
    seen: dict[str, Any] = {}

    def grab(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.update({k: kwargs[k] for k in DECODER_IMAGE_INPUTS if kwargs.get(k) is not None})

    modules = _image_input_decoders(w)
    if not modules:
        return seen
    handles = [m.register_forward_pre_hook(grab, with_kwargs=True) for m in modules]
    try:
        with torch.no_grad():
            w.reference(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@contextmanager
def with_decoder_image_inputs(w: Wrapped, inputs: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """For the block, the HF reference's decoder gets the `DECODER_IMAGE_INPUTS` of a clean run
    of `inputs` on every call (for a hand-built ``inputs_embeds`` forward: HF computes Qwen3-VL's
    deepstack features only from ``pixel_values``); yields them. A no-op for other families."""
    extra = hf_decoder_image_inputs(w, inputs)

    def inject(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, **extra}

    handles = (
        [m.register_forward_pre_hook(inject, with_kwargs=True) for m in _image_input_decoders(w)]
        if extra
        else []
    )
    try:
        yield extra
    finally:
        for handle in handles:
            handle.remove()


def deepstack_added(hidden: torch.Tensor, extra: Mapping[str, Any], layer: int) -> torch.Tensor:
    """`hidden` (the output of decoder layer `layer`) with HF's deepstack features of that layer
    added at HF's visual positions: the input of layer ``layer + 1``. `extra` is
    `hf_decoder_image_inputs`; without deepstack (other families), `hidden` itself."""
    embeds = extra.get("deepstack_visual_embeds")
    if embeds is None or layer >= len(embeds):
        return hidden
    mask = extra["visual_pos_masks"]
    out = hidden.clone()
    out[mask] = out[mask] + embeds[layer].to(hidden.dtype)
    return out

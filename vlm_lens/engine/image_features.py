"""The ``hook_image_embeds`` hook point: image features as they enter the decoder.

Every supported family computes its image features in ``get_image_features`` of its inner
model and scatters them into the placeholder positions. `attach_image_hook` gives that module a
``hook_image_embeds`` HookPoint child and wraps ``get_image_features`` *on that instance only*
(an instance attribute that shadows the class method; the Hugging Face class is never touched,
so every other model of the class runs the untouched Hugging Face code), so that features pass
through the hook as one ``[batch, n_image_tokens, d_model]`` tensor. The adapter says where the
features sit in the method's output (`VLMAdapter.image_features`, default ``.pooler_output``)
and how to put an edit back (`VLMAdapter.with_image_features`). While the features are
computed, the token-embedding call used for VQ codes (Chameleon, Emu3) goes to the raw
embedding, so TransformerLens' ``hook_embed`` fires once, on the text sequence only.

Families whose ``get_image_features`` also returns deepstack features (Qwen3-VL: features of
early tower layers that the decoder adds at the image positions after each of its first
layers; `VLMAdapter.deepstack_levels`, default none) get one more HookPoint per level,
``hook_deepstack_embeds.{i}`` (`attach_deepstack_hooks`), which sees that level's features
grouped as ``hook_image_embeds`` sees the decoder-input ones.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

if TYPE_CHECKING:
    from vlm_lens.adapters import VLMAdapter

HOOK_ATTRIBUTE = "hook_image_embeds"
DEEPSTACK_ATTRIBUTE = "hook_deepstack_embeds"
METHOD = "get_image_features"
_GROUPS_ATTRIBUTE = "_vlm_lens_images_per_sequence"
_WRAPPED_FLAG = "_vlm_lens_wrapped"


def attach_image_hook(owner: nn.Module, adapter: VLMAdapter) -> HookPoint:
    """Add a ``hook_image_embeds`` HookPoint to `owner` (the module with ``get_image_features``)
    and route that instance's features through it. Returns the HookPoint.

    Example:
        >>> from vlm_lens.adapters import adapter_for
        >>> from vlm_lens.testing import build_tiny
        >>> tiny = build_tiny("llava")
        >>> hook = attach_image_hook(tiny.model.model, adapter_for(tiny.model, tiny.processor))
        >>> "get_image_features" in vars(tiny.model.model)  # the instance, not the class
        True
    """
    bound = getattr(owner, METHOD)
    if getattr(bound, _WRAPPED_FLAG, False):  # attached before: wrap the original again
        bound = bound._vlm_lens_original
    object.__setattr__(owner, METHOD, _wrap(owner, bound, adapter))
    hook = HookPoint()
    owner.add_module(HOOK_ATTRIBUTE, hook)
    return hook


class DeepstackHooks(nn.ModuleList):
    """One HookPoint per deepstack level. ``get_hooks`` is what TransformerBridge reads when
    the list is set as its attribute: it registers the points as ``hook_deepstack_embeds.{i}``."""

    def __init__(self, levels: int) -> None:
        super().__init__(HookPoint() for _ in range(levels))

    def points(self) -> list[HookPoint]:
        """The points, by level."""
        return [hook for hook in self if isinstance(hook, HookPoint)]

    def get_hooks(self) -> dict[str, HookPoint]:
        """The points by level, ``{"0": ..., "1": ...}``."""
        return {str(level): hook for level, hook in enumerate(self.points())}


def attach_deepstack_hooks(owner: nn.Module, adapter: VLMAdapter) -> DeepstackHooks | None:
    """Give `owner` a ``hook_deepstack_embeds`` child with one HookPoint per deepstack level
    of `adapter` (``None``, and nothing added, for families without deepstack). The wrapper
    of `attach_image_hook` routes each level's features through its point.

    Example:
        >>> from vlm_lens.adapters import adapter_for
        >>> from vlm_lens.testing import build_tiny
        >>> tiny = build_tiny("qwen3_vl")
        >>> len(attach_deepstack_hooks(tiny.model.model, adapter_for(tiny.model, tiny.processor)))
        1
    """
    levels = adapter.deepstack_levels()
    if not levels:
        return None
    points = DeepstackHooks(levels)
    owner.add_module(DEEPSTACK_ATTRIBUTE, points)
    return points


def set_images_per_sequence(owner: nn.Module, counts: Sequence[int] | None) -> None:
    """Tell `owner` how the images of the next calls group into sequences (``None`` resets)."""
    object.__setattr__(owner, _GROUPS_ATTRIBUTE, None if counts is None else tuple(counts))


def _wrap(owner: nn.Module, original: Any, adapter: VLMAdapter) -> Any:
    """A bound method of `owner` that calls `original` (the bound HF method) through the hook.

    Bound (not a closure over `owner`) so that a deep copy of the model rebinds it to the copy.
    """
    function = original.__func__ if isinstance(original, types.MethodType) else None

    # Wrap the unbound function when there is one, so that inspect.signature of the bound
    # wrapper is the HF method's (generate reads it to pre-encode pixel_values).
    @functools.wraps(function if function is not None else original)
    def get_image_features(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        call = (
            types.MethodType(function, self) if function is not None else original
        )  # the class's function, on whichever copy of the owner this is bound to
        hook = getattr(self, HOOK_ATTRIBUTE, None)  # a registered child, by nn.Module lookup
        if not isinstance(hook, HookPoint):
            return call(*args, **kwargs)
        embeddings = getattr(self, "get_input_embeddings")()  # noqa: B009 - an HF model's
        raw = getattr(embeddings, "original_component", None)
        if raw is not None:
            object.__setattr__(self, "get_input_embeddings", lambda: raw)
        try:
            out = call(*args, **kwargs)
        finally:
            if raw is not None:
                object.__delattr__(self, "get_input_embeddings")
        groups = getattr(self, _GROUPS_ATTRIBUTE, None)
        if hook.fwd_hooks or hook.bwd_hooks:
            edited = _through_hook(hook, adapter.image_features(out), groups)
            out = adapter.with_image_features(out, edited)
        deepstack = getattr(self, DEEPSTACK_ATTRIBUTE, None)
        points = deepstack.points() if isinstance(deepstack, DeepstackHooks) else []
        if any(point.fwd_hooks or point.bwd_hooks for point in points):
            levels = list(adapter.deepstack_features(out))
            for level, point in enumerate(points):
                if point.fwd_hooks or point.bwd_hooks:
                    levels[level] = _through_hook(point, levels[level], groups)
            out = adapter.with_deepstack_features(out, levels)
        return out

    setattr(get_image_features, _WRAPPED_FLAG, True)
    setattr(get_image_features, "_vlm_lens_original", original)  # noqa: B010
    return types.MethodType(get_image_features, owner)


def _through_hook(hook: HookPoint, features: Any, groups: Sequence[int] | None) -> Any:
    """Pass per-image features through `hook` as ``[batch, n_tokens, d]`` and restore their
    container (a ``[n_images, n, d]`` tensor, a list or a tuple of ``[n_i, d]`` tensors)."""
    per_image: list[Tensor] = (
        list(features.unbind(0)) if isinstance(features, Tensor) else list(features)
    )
    if groups is None or sum(groups) != len(per_image):
        groups = [1] * len(per_image)
    sequences: list[Tensor] = []
    start = 0
    for count in groups:
        parts = per_image[start : start + count]
        start += count
        sequences.append(
            torch.cat(parts, dim=0) if parts else per_image[0].new_zeros(0, per_image[0].shape[-1])
        )
    longest = max(s.shape[0] for s in sequences)
    stacked = per_image[0].new_zeros(len(sequences), longest, per_image[0].shape[-1])
    for b, seq in enumerate(sequences):
        stacked[b, : seq.shape[0]] = seq
    edited = hook(stacked)
    out: list[Tensor] = []
    for b, seq in enumerate(sequences):
        flat = edited[b, : seq.shape[0]]
        offset = 0
        for part in per_image[sum(groups[:b]) : sum(groups[: b + 1])]:
            out.append(flat[offset : offset + part.shape[0]])
            offset += part.shape[0]
    if isinstance(features, Tensor):
        return torch.stack(out, dim=0)
    return type(features)(out) if isinstance(features, tuple) else out

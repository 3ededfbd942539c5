"""The ``hook_image_embeds`` hook point: image features as they enter the decoder.

Every supported family computes its image features in ``get_image_features`` of its inner
model and scatters them into the placeholder positions. `attach_image_hook` gives that module a
``hook_image_embeds`` HookPoint child and wraps the *class* method once, so that features pass
through the hook as one ``[batch, n_image_tokens, d_model]`` tensor. Models without the child
(any model vlm_lens has not wrapped) run the untouched Hugging Face code. While the features
are computed, the token-embedding call used for VQ codes (Chameleon, Emu3) goes to the raw
embedding, so TransformerLens' ``hook_embed`` fires once, on the text sequence only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

HOOK_ATTRIBUTE = "hook_image_embeds"
_GROUPS_ATTRIBUTE = "_vlm_lens_images_per_sequence"
_WRAPPED_FLAG = "_vlm_lens_wrapped"


def attach_image_hook(owner: nn.Module) -> HookPoint:
    """Add a ``hook_image_embeds`` HookPoint to `owner` (the module with ``get_image_features``)
    and make its class route features through it. Returns the HookPoint."""
    cls = type(owner)
    original = cls.get_image_features
    if not getattr(original, _WRAPPED_FLAG, False):
        cls.get_image_features = _wrap(original)
    hook = HookPoint()
    owner.add_module(HOOK_ATTRIBUTE, hook)
    return hook


def set_images_per_sequence(owner: nn.Module, counts: Sequence[int] | None) -> None:
    """Tell `owner` how the images of the next calls group into sequences (``None`` resets)."""
    object.__setattr__(owner, _GROUPS_ATTRIBUTE, None if counts is None else tuple(counts))


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_image_features(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        hook = self._modules.get(HOOK_ATTRIBUTE)
        if hook is None:
            return original(self, *args, **kwargs)
        embeddings = self.get_input_embeddings()
        raw = getattr(embeddings, "original_component", None)
        if raw is not None:
            object.__setattr__(self, "get_input_embeddings", lambda: raw)
        try:
            out = original(self, *args, **kwargs)
        finally:
            if raw is not None:
                object.__delattr__(self, "get_input_embeddings")
        if hook.fwd_hooks or hook.bwd_hooks:
            groups = getattr(self, _GROUPS_ATTRIBUTE, None)
            out.pooler_output = _through_hook(hook, out.pooler_output, groups)
        return out

    setattr(get_image_features, _WRAPPED_FLAG, True)
    return get_image_features


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

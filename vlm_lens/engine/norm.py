"""Norm layers without hooks skip the hook intermediates TransformerLens computes anyway.

TransformerLens 4.3's ``NormalizationBridge`` in native-autograd mode (every vlm_lens family
uses it) computes the mean, variance, scale and normalised tensor for ``hook_scale`` and
``hook_normalized`` on every call and then, when no hook edited them, returns the Hugging Face
norm's own output. `FastNormalizationBridge` and `FastRMSNormalizationBridge` override the
public ``forward``: with both hook points idle they return ``hook_out(hf_norm(hook_in(x)))``,
the same tensor without the extra passes over ``[batch, pos, d_model]`` (about a tenth of a
small model's forward); otherwise TransformerLens' own forward runs. ``tests/test_compat.py``
checks that the two give the same tensor, so a change in TransformerLens shows up there.

They are built in place of the plain bridges by `vlm_lens.engine.components` (through the
bridge's public ``post_adapter_hook``), never swapped in afterwards.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny
    >>> tiny = build_tiny("llava")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> type(model.bridge.blocks[0].ln1).__name__
    'FastRMSNormalizationBridge'
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformer_lens.model_bridge.generalized_components.normalization import (
    NormalizationBridge,
)
from transformer_lens.model_bridge.generalized_components.rms_normalization import (
    RMSNormalizationBridge,
)

from vlm_lens.engine.compat import has_hooks, norm_constructor_overrides


class _SkipIdleHookMath:
    """Mixin: the HF norm's output straight away when ``hook_scale``/``hook_normalized`` are
    idle and the bridge runs HF's norm (native-autograd mode)."""

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        norm: Any = self
        component = norm.original_component
        idle = not (has_hooks(norm.hook_scale) or has_hooks(norm.hook_normalized))
        fast = (
            idle
            and norm.use_native_layernorm_autograd
            and not kwargs
            and component is not None
            and not isinstance(component, nn.Identity)
        )
        if not fast:
            return super().forward(hidden_states, **kwargs)  # type: ignore[misc]
        x = norm.hook_in(hidden_states)
        result = component(x)
        if result.dtype != x.dtype:
            result = result.to(x.dtype)
        return norm.hook_out(result)


class FastNormalizationBridge(_SkipIdleHookMath, NormalizationBridge):
    """`NormalizationBridge` that skips the hook math when its hooks are idle."""


class FastRMSNormalizationBridge(_SkipIdleHookMath, RMSNormalizationBridge):
    """`RMSNormalizationBridge` that skips the hook math when its hooks are idle."""


FAST_NORMS: dict[type, type] = {
    NormalizationBridge: FastNormalizationBridge,
    RMSNormalizationBridge: FastRMSNormalizationBridge,
}
"""Plain TransformerLens norm bridge -> its fast subclass."""


def fast_norm(template: NormalizationBridge) -> NormalizationBridge:
    """A fast norm built with `template`'s constructor arguments (`template` is an unbound
    component-mapping entry)."""
    cls = FAST_NORMS[type(template)]
    kwargs: dict[str, Any] = {
        "name": template.name,
        "config": template.config,
        "submodules": template.submodules,
        "optional": template.optional,
        "use_native_layernorm_autograd": template.use_native_layernorm_autograd,
    }
    if cls is FastNormalizationBridge:
        kwargs.update(norm_constructor_overrides(template))
    return cls(**kwargs)

"""Norm layers without hooks skip the hook intermediates TransformerLens computes anyway.

TransformerLens 4.3's ``NormalizationBridge`` (native-autograd mode, which every vlm_lens family
uses) computes the mean, variance, scale and normalised tensor for ``hook_scale`` and
``hook_normalized`` on every call, and then, when no hook edited them, returns the Hugging Face
norm's own output. `install` swaps such bridges to a subclass that returns the HF norm's output
directly when neither hook point has a hook: the same tensor the bridge returns, without the
extra passes over ``[batch, pos, d_model]`` (about a tenth of a small model's forward). With a
hook on either point the bridge's own code runs.

Private to the model layer: `vlm_lens.model` installs it.
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

from vlm_lens.engine.attention import has_hooks


class _SkipIdleHookMath:
    """Mixin: the HF norm's output straight away when ``hook_scale``/``hook_normalized`` are
    idle (what `NormalizationBridge._hf_autograd_forward_with_hooks` returns then)."""

    def _hf_autograd_forward_with_hooks(self, x: torch.Tensor) -> torch.Tensor:
        component: Any = self.original_component  # type: ignore[attr-defined]
        idle = not (has_hooks(self.hook_scale) or has_hooks(self.hook_normalized))  # type: ignore[attr-defined]
        if idle and component is not None and not isinstance(component, nn.Identity):
            result = component(x)
            return result if result.dtype == x.dtype else result.to(x.dtype)
        return super()._hf_autograd_forward_with_hooks(x)  # type: ignore[misc]


class FastNormalizationBridge(_SkipIdleHookMath, NormalizationBridge):
    """`NormalizationBridge` that skips the hook math when its hooks are idle."""


class FastRMSNormalizationBridge(_SkipIdleHookMath, RMSNormalizationBridge):
    """`RMSNormalizationBridge` that skips the hook math when its hooks are idle."""


_SWAPS: dict[type, type] = {
    NormalizationBridge: FastNormalizationBridge,
    RMSNormalizationBridge: FastRMSNormalizationBridge,
}


def install(modules: Any) -> int:
    """Swap every plain norm bridge in `modules` to its fast subclass; returns how many."""
    swapped = 0
    for module in modules:
        fast = _SWAPS.get(type(module))
        if fast is not None:
            module.__class__ = fast
            swapped += 1
    return swapped

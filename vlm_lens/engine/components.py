"""What vlm_lens builds into a TransformerBridge: its fast attention and norm components.

`build_bridge` calls TransformerLens' ``build_bridge_from_module`` with a ``post_adapter_hook``
(the bridge builder's public point for editing an adapter's ``component_mapping`` before
anything is bound): every plain ``PositionEmbeddingsAttentionBridge`` of the mapping becomes a
`DispatchingAttention` and every plain norm bridge its fast subclass (`vlm_lens.engine.norm`),
each built with the template's own constructor arguments. So TransformerLens binds vlm_lens'
classes like its own; nothing is swapped afterwards. A template whose state the rebuilt
component would not reproduce (a TransformerLens release that keeps more) stays as it is, with
a warning.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny
    >>> tiny = build_tiny("chameleon")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> type(model.bridge.blocks[0].attn).__name__
    'DispatchingAttention'
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

from torch import nn
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.generalized_components import (
    PositionEmbeddingsAttentionBridge,
)
from transformer_lens.model_bridge.sources import build_bridge_from_module

from vlm_lens.engine.attention import DispatchingAttention
from vlm_lens.engine.norm import FAST_NORMS, fast_norm
from vlm_lens.engine.placement import Placement


def build_bridge(
    model: nn.Module, architecture: str, placement: Placement | None = None
) -> TransformerBridge:
    """The TransformerBridge of `model` with vlm_lens' components, in eval mode.

    ``cfg.device`` is where inputs go (the input embedding's execution device for a model
    dispatched over a ``device_map``) and ``cfg.n_devices`` the number of execution devices,
    as TransformerLens' own loader records them.

    Example:
        >>> bridge = build_bridge(tiny.model, "LlavaForConditionalGeneration")  # doctest: +SKIP
    """
    placement = placement or Placement.of(model)
    bridge = build_bridge_from_module(
        model,
        architecture,
        hf_config=copy.deepcopy(model.config),
        tokenizer=None,
        device=str(placement.input_device),
        post_adapter_hook=use_vlm_lens_components,
    ).eval()
    bridge.cfg.n_devices = max(1, len(placement.devices))
    return bridge


def use_vlm_lens_components(adapter: Any) -> None:
    """``post_adapter_hook``: replace the adapter's attention and norm templates in place,
    now and again after the adapter's ``prepare_model`` (which may rebuild its mapping from
    the HF model, as Chameleon's does for ``swin_norm``)."""
    _replace_all(adapter.component_mapping)
    prepare = adapter.prepare_model

    def prepare_model(hf_model: Any) -> Any:
        out = prepare(hf_model)
        _replace_all(adapter.component_mapping)
        return out

    adapter.prepare_model = prepare_model


def _replace_all(mapping: dict[str, Any]) -> None:
    for key, component in list(mapping.items()):
        mapping[key] = _replaced(component)


def _replaced(component: Any) -> Any:
    for name, sub in list((getattr(component, "submodules", None) or {}).items()):
        component.submodules[name] = _replaced(sub)
    build = _builder(component)
    if build is None:
        return component
    new = build(component)
    difference = _state_difference(component, new)
    if difference:
        warnings.warn(
            f"{type(component).__name__} {component.name!r} keeps state vlm_lens' "
            f"{type(new).__name__} would not carry over ({difference}); it stays "
            "TransformerLens' own (exact, without vlm_lens' fast path). Check the "
            "transformer-lens pin.",
            stacklevel=3,
        )
        return component
    return new


def _builder(component: Any) -> Callable[[Any], Any] | None:
    if type(component) is PositionEmbeddingsAttentionBridge:
        return _dispatching_attention
    if type(component) in FAST_NORMS:
        return fast_norm
    return None


def _dispatching_attention(template: PositionEmbeddingsAttentionBridge) -> DispatchingAttention:
    if template.name is None:  # pragma: no cover - every attention template names its module
        raise ValueError("an attention template without a module name")
    return DispatchingAttention(
        name=template.name,
        config=template.config,
        submodules=template.submodules,
        optional=template.optional,
        is_causal=template.is_causal,
    )


def _state_difference(old: nn.Module, new: nn.Module) -> str:
    """The attributes in which `new` differs from `old` (their hook points and submodules by
    name, everything else by value); empty when they agree."""
    a, b = vars(old), vars(new)
    if set(a) != set(b):
        return f"attributes {sorted(set(a) ^ set(b))}"
    if set(a["_modules"]) != set(b["_modules"]):
        return f"children {sorted(set(a['_modules']) ^ set(b['_modules']))}"
    skip = {"_modules", "_parameters", "_buffers", "submodules"}
    for key in sorted(set(a) - skip):
        if not _same(a[key], b[key]):
            return f"{key}: {a[key]!r} != {b[key]!r}"
    return ""


def _same(x: Any, y: Any) -> bool:
    """Equal values; modules (fresh hook points) by type, containers item by item."""
    if x is y:
        return True
    if isinstance(x, nn.Module) or isinstance(y, nn.Module):
        return type(x) is type(y)
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same(i, j) for i, j in zip(x, y, strict=True))
    if type(x) is not type(y):
        return False
    if getattr(type(x), "__eq__", None) is object.__eq__ and hasattr(
        x, "__dict__"
    ):  # plain objects: their state
        return _same(vars(x), vars(y))
    try:
        return bool(x == y)
    except Exception:  # noqa: BLE001 - values without a boolean ==
        return False

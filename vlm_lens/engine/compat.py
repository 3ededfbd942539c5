"""Every private name of TransformerLens, transformers and torch that vlm_lens relies on.

vlm_lens reaches its dependencies through their public extension points: TransformerLens'
adapter registration (``ArchitectureAdapterFactory.register_adapter``) and bridge-building hook
(``build_bridge_from_module(post_adapter_hook=...)``), transformers' attention and mask
registries (``AttentionInterface``, ``AttentionMaskInterface``, ``set_attn_implementation``)
and cache API (``Cache.update``, ``DynamicCache(...)``, ``crop``). What no public point offers is
read here, through one function per name, and nowhere else; ``tests/test_compat.py`` fails,
naming the pin to check, the day one of them disappears (`missing`), and checks that every
behaviour vlm_lens copies from a dependency still matches it.

The pins: ``accelerate>=1.0,<2``, ``transformer-lens>=4.3,<4.4``, ``transformers>=5.9,<5.24``,
``torch>=2.6,<2.14``.

Example:
    >>> missing()
    []
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge.generalized_components.normalization import (
    NormalizationBridge,
)

PINS = {
    "accelerate": "accelerate>=1.0,<2",
    "torch": "torch>=2.6,<2.14",
    "transformer_lens": "transformer-lens>=4.3,<4.4",
    "transformers": "transformers>=5.9,<5.24",
}
"""The dependency pins of pyproject.toml that the private names below were checked against."""

_MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)

PRIVATE_NAMES: dict[str, tuple[str, str]] = {
    # name -> (owner, why no public point does it)
    "torch.nn.Module._forward_hooks": (
        "torch",
        "whether a hook point has any hook, however it was attached (TransformerLens' "
        "HookPoint.fwd_hooks lists only the hooks added through add_hook)",
    ),
    "torch.nn.Module._forward_pre_hooks": ("torch", "as _forward_hooks"),
    "torch.nn.Module._backward_hooks": ("torch", "as _forward_hooks"),
    "torch.nn.Module._backward_pre_hooks": ("torch", "as _forward_hooks"),
    "torch.nn.modules.module._global_forward_hooks": (
        "torch",
        "hooks registered for every module (register_module_forward_hook), which a dataset "
        "run's fingerprint must see; torch lists them nowhere public",
    ),
    "torch.nn.modules.module._global_forward_pre_hooks": ("torch", "as _global_forward_hooks"),
    "torch.nn.modules.module._global_backward_hooks": ("torch", "as _global_forward_hooks"),
    "torch.nn.modules.module._global_backward_pre_hooks": ("torch", "as _global_forward_hooks"),
    "transformer_lens.HookPoint.fwd_hooks[i].user_hook": (
        "transformer_lens",
        "the function a LensHandle wraps, to read a mask-only knockout's blocked edges",
    ),
    "transformer_lens.NormalizationBridge._uses_rms_norm_override": (
        "transformer_lens",
        "a constructor argument the bridge keeps only privately; needed to rebuild a norm "
        "template as its fast subclass in post_adapter_hook",
    ),
    "transformer_lens.NormalizationBridge._uses_weight_offset_override": (
        "transformer_lens",
        "as _uses_rms_norm_override",
    ),
    "transformer_lens.TransformerBridge._register_aliases": (
        "transformer_lens",
        "re-resolving hook_aliases after vlm_lens adds hook_inputs_embeds; the bridge has no "
        "public call that adds an alias",
    ),
    "transformer_lens.ArchitectureAdapter._set_rms_rotary_defaults": (
        "transformer_lens",
        "protected helper TransformerLens' own adapters use (its AGENTS.md conventions); "
        "vlm_lens' Chameleon adapter calls it",
    ),
    "transformer_lens.ArchitectureAdapter._qkvo_weight_conversions": (
        "transformer_lens",
        "as _set_rms_rotary_defaults (Chameleon adapter)",
    ),
    "transformer_lens.ArchitectureAdapter._gated_mlp": (
        "transformer_lens",
        "as _set_rms_rotary_defaults (Chameleon adapter)",
    ),
    "torch.nn.Module._non_persistent_buffers_set": (
        "torch",
        "vlm_lens.testing randomises only the buffers a checkpoint saves",
    ),
    "transformers.PretrainedConfig._attn_implementation": (
        "transformers",
        "the attention implementation a model runs (HF's own code reads it; "
        "set_attn_implementation writes it)",
    ),
    "transformers.models.llava_next.modeling_llava_next.get_anyres_image_grid_shape": (
        "transformers",
        "not in the module's __all__; the LLaVA-Next adapter computes the tile grid of each "
        "image exactly as HF's forward does (vlm_lens.adapters.llava_next)",
    ),
    "accelerate.hooks.ModelHook attached as module._hf_hook": (
        "accelerate",
        "the execution device accelerate's dispatch gave a module (AlignDevicesHook."
        "execution_device; SequentialHook.hooks): offloaded weights read 'meta', and the "
        "device_map's main device for 'cpu'/'disk' entries is chosen inside dispatch_model",
    ),
    "torch.Tensor._version": (
        "torch",
        "the counter every in-place edit of a tensor bumps: a result's provenance rehashes a "
        "model's weights only when one of them changed (hashing 7B weights takes seconds)",
    ),
    "transformers.models.llava_next.modeling_llava_next.unpad_image": (
        "transformers",
        "as get_anyres_image_grid_shape: the unpadded feature rows and columns of each image",
    ),
}
"""Every private name in use, with its owner and the reason."""


def has_hooks(hook: nn.Module) -> bool:
    """Whether any forward or backward hook is registered on `hook`, by any route."""
    return any(bool(getattr(hook, name)) for name in _MODULE_HOOK_DICTS)


def module_hooks(module: nn.Module) -> list[tuple[str, Any, bool]]:
    """Every hook registered on `module` itself, in call order per kind, as
    ``(kind, fn, through_lens)`` with kind ``"forward"``, ``"forward_pre"``, ``"backward"`` or
    ``"backward_pre"``. For a hook added through TransformerLens (``add_hook``, ``hooks()``)
    the function is the user's (``LensHandle.user_hook``), not TransformerLens' wrapper, and
    `through_lens` is true."""
    users: dict[int, Any] = {}
    if isinstance(module, HookPoint):
        for handle in [*module.fwd_hooks, *module.bwd_hooks]:
            user = getattr(handle, "user_hook", None)
            if user is not None:
                users[handle.hook.id] = user
    out = []
    for attr in _MODULE_HOOK_DICTS:
        kind = attr[1:-6]  # "_forward_pre_hooks" -> "forward_pre"
        for key, fn in getattr(module, attr).items():
            out.append((kind, users.get(key, fn), key in users))
    return out


def global_module_hooks() -> list[tuple[str, Any, bool]]:
    """The hooks torch runs on every module (``register_module_forward_hook`` and its
    siblings), as `module_hooks` gives them."""
    from torch.nn.modules import module as torch_module

    out = []
    for attr in _MODULE_HOOK_DICTS:
        kind = attr[1:-6]
        for fn in getattr(torch_module, f"_global{attr}").values():
            out.append((kind, fn, False))
    return out


def only_lens_forward_hooks(hook: HookPoint) -> list[Any] | None:
    """The functions of `hook`'s forward hooks when all were added through TransformerLens
    (``add_hook``, ``hooks()``, ``run_with_hooks``) and it has no other hook; else ``None``."""
    handles = list(hook.fwd_hooks)
    others = hook._forward_pre_hooks or hook._backward_hooks or hook._backward_pre_hooks
    if others or len(handles) != len(hook._forward_hooks):
        return None
    return [getattr(h, "user_hook", None) for h in handles]


def norm_constructor_overrides(norm: NormalizationBridge) -> dict[str, Any]:
    """The constructor arguments of a ``NormalizationBridge`` that it keeps only privately."""
    return {
        "uses_rms_norm": norm._uses_rms_norm_override,
        "uses_weight_offset": norm._uses_weight_offset_override,
    }


def register_aliases(bridge: Any) -> None:
    """Make a TransformerBridge resolve its (edited) ``hook_aliases``."""
    bridge._register_aliases()


def attn_implementation(config: Any) -> str | None:
    """The attention implementation a Hugging Face config names."""
    value = config._attn_implementation
    return None if value is None else str(value)


def attention_implementations(config: Any) -> dict[str, Any]:
    """``{"": implementation, sub_config: {...}}`` of a Hugging Face config (``{}`` without
    one): the nested form ``set_attn_implementation`` takes.

    Example:
        >>> from transformers import LlamaConfig
        >>> attention_implementations(LlamaConfig(attn_implementation="sdpa"))
        {'': 'sdpa'}
    """
    if config is None:
        return {}
    out: dict[str, Any] = {"": attn_implementation(config)}
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None:
            out[key] = attention_implementations(sub)
    return out


def accelerate_hooks(module: nn.Module) -> list[Any]:
    """The accelerate hooks on `module` (its ``_hf_hook``, a sequential hook unpacked), or
    ``[]``: where its execution device and offloaded ``weights_map`` live."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


def accelerate_execution_device(module: nn.Module) -> torch.device | None:
    """The device accelerate runs `module` on (its ``_hf_hook``), or ``None`` without one."""
    for one in accelerate_hooks(module):
        device = getattr(one, "execution_device", None)
        if device is not None:
            return torch.device(device)
    return None


def tensor_version(tensor: torch.Tensor) -> int:
    """How many in-place edits `tensor`'s storage has seen (its ``_version``)."""
    return int(tensor._version)


def missing() -> list[str]:
    """The private names of `PRIVATE_NAMES` that the installed versions no longer have, each
    with the pin to check (empty when all are there)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PretrainedConfig

    gone: list[str] = []
    module = nn.Module()
    for name in _MODULE_HOOK_DICTS:
        if not isinstance(getattr(module, name, None), dict):
            gone.append(f"torch.nn.Module.{name} ({PINS['torch']})")
    from torch.nn.modules import module as torch_module

    for name in _MODULE_HOOK_DICTS:
        if not isinstance(getattr(torch_module, f"_global{name}", None), dict):
            gone.append(f"torch.nn.modules.module._global{name} ({PINS['torch']})")
    point = HookPoint()
    handle = point.add_hook(lambda tensor, hook: None)  # noqa: ARG005
    try:
        if not point.fwd_hooks or not hasattr(point.fwd_hooks[0], "user_hook"):
            gone.append(f"HookPoint.fwd_hooks[i].user_hook ({PINS['transformer_lens']})")
    finally:
        point.remove_hooks()
        del handle
    norm = NormalizationBridge(name="norm", config=None)
    for attr in ("_uses_rms_norm_override", "_uses_weight_offset_override"):
        if not hasattr(norm, attr):
            gone.append(f"NormalizationBridge.{attr} ({PINS['transformer_lens']})")
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter

    for helper in ("_set_rms_rotary_defaults", "_qkvo_weight_conversions", "_gated_mlp"):
        if not callable(getattr(ArchitectureAdapter, helper, None)):
            gone.append(f"ArchitectureAdapter.{helper} ({PINS['transformer_lens']})")
    if not isinstance(getattr(module, "_non_persistent_buffers_set", None), set):
        gone.append(f"torch.nn.Module._non_persistent_buffers_set ({PINS['torch']})")
    if not callable(getattr(TransformerBridge, "_register_aliases", None)):
        gone.append(f"TransformerBridge._register_aliases ({PINS['transformer_lens']})")
    if not isinstance(getattr(PretrainedConfig, "_attn_implementation", None), property):
        gone.append(f"PretrainedConfig._attn_implementation ({PINS['transformers']})")
    from accelerate.hooks import AlignDevicesHook, SequentialHook, add_hook_to_module

    probe = nn.Linear(1, 1)
    add_hook_to_module(probe, SequentialHook(AlignDevicesHook(execution_device="cpu")))
    if accelerate_execution_device(probe) != torch.device("cpu"):
        gone.append(f"accelerate module._hf_hook.execution_device ({PINS['accelerate']})")
    import importlib

    for name, (owner, _) in PRIVATE_NAMES.items():
        if name.startswith(f"{owner}.models."):  # a module-level function outside __all__
            module_name, _, attr = name.rpartition(".")
            if not callable(getattr(importlib.import_module(module_name), attr, None)):
                gone.append(f"{name} ({PINS[owner]})")
    if not isinstance(getattr(torch.zeros(1), "_version", None), int):
        gone.append(f"torch.Tensor._version ({PINS['torch']})")
    return gone

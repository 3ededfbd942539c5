"""Model-family adapters and their registry.

`adapter_for(model)` finds the adapter of a Hugging Face model; `register_family` adds a new
one (see CONTRIBUTING.md). Importing this package registers the TransformerLens architecture
adapters that TransformerLens lacks (Chameleon, Janus, InternVL, the Pixtral-tower
LLaVA, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, PaliGemma) through its public
``ArchitectureAdapterFactory.register_adapter``.

Example:
    >>> from vlm_lens.adapters import supported_families
    >>> {"chameleon", "llava_onevision", "pixtral", "qwen2_vl"} <= set(supported_families())
    True
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

from vlm_lens.adapters.base import VLMAdapter, vision_tower_type
from vlm_lens.adapters.chameleon import ChameleonAdapter, ChameleonArchitectureAdapter
from vlm_lens.adapters.emu3 import Emu3Adapter
from vlm_lens.adapters.gemma import Gemma3Adapter
from vlm_lens.adapters.idefics3 import Idefics3Adapter, SmolVLMAdapter
from vlm_lens.adapters.internvl import InternVLAdapter
from vlm_lens.adapters.janus import JanusAdapter, JanusArchitectureAdapter
from vlm_lens.adapters.llava import LlavaAdapter
from vlm_lens.adapters.llava_next import LlavaNextAdapter, LlavaOnevisionAdapter
from vlm_lens.adapters.paligemma import PaliGemmaAdapter, PaliGemmaArchitectureAdapter
from vlm_lens.adapters.pixtral import Mistral3Adapter, PixtralAdapter
from vlm_lens.adapters.qwen_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter, Qwen3VLAdapter
from vlm_lens.errors import UnsupportedModelError

_REGISTRY: dict[str, list[type[VLMAdapter]]] = {}
"""Hugging Face class name -> the adapters registered for it, asked in order (`handles`)."""


def register_family(adapter: type[VLMAdapter]) -> type[VLMAdapter]:
    """Register a family adapter (usable as a class decorator).

    Its TransformerLens architecture adapter, if it names one, is registered with
    TransformerLens under its `tl_architecture`, else under each of its Hugging Face
    architectures. Several adapters may share a Hugging Face class; `adapter_class_for` takes
    the first whose `VLMAdapter.handles` accepts the model's config (registering a family again
    replaces it in place).

    Example:
        >>> from vlm_lens.adapters import LlavaAdapter, register_family
        >>> register_family(LlavaAdapter) is LlavaAdapter
        True
    """
    for arch in adapter.architectures:
        entries = _REGISTRY.setdefault(arch, [])
        same = [i for i, a in enumerate(entries) if a.family == adapter.family]
        if same:
            entries[same[0]] = adapter
        else:
            entries.append(adapter)
    if adapter.tl_architecture_adapter is not None:
        names = (adapter.tl_architecture,) if adapter.tl_architecture else adapter.architectures
        for name in names:
            ArchitectureAdapterFactory.register_adapter(name, adapter.tl_architecture_adapter)
    return adapter


def supported_families() -> tuple[str, ...]:
    """Names of the registered families, sorted."""
    return tuple(sorted({a.family for entries in _REGISTRY.values() for a in entries}))


def supported_architectures() -> tuple[str, ...]:
    """Hugging Face class names with a registered adapter, sorted."""
    return tuple(sorted(_REGISTRY))


def adapter_class_for(model: nn.Module) -> type[VLMAdapter]:
    """The adapter class of a Hugging Face model, by its class name.

    The class itself decides, not ``config.architectures`` (which may be stale), and subclasses
    are not accepted: a subclass may change the forward the adapter relies on.

    Raises:
        UnsupportedModelError: naming the architecture, the supported ones and how to add one;
            for a supported class with a vision tower no adapter takes (a LLaVA with an
            unknown tower), naming the tower and the supported ones.
    """
    name = type(model).__name__
    if name in _REGISTRY:
        return adapter_class_for_config(name, getattr(model, "config", None))
    text_only = hasattr(model, "config") and not any(
        hasattr(model.config, k) for k in ("vision_config", "vq_config", "vocabulary_map")
    )
    hint = (
        " It looks like a text-only model: vlm_lens wraps vision-language models; use "
        "transformer_lens.model_bridge.TransformerBridge for text models."
        if text_only
        else ""
    )
    raise UnsupportedModelError(
        f"{type(model).__name__} is not a supported vision-language architecture.{hint} "
        f"Supported: {', '.join(supported_architectures())}. To add a family, subclass "
        "vlm_lens.adapters.VLMAdapter and register it with vlm_lens.adapters.register_family "
        "(CONTRIBUTING.md, 'Adding a model family')."
    )


def adapter_class_for_config(architecture: str, config: Any) -> type[VLMAdapter]:
    """The adapter class for Hugging Face class `architecture` with `config`: the first
    adapter registered for it whose `VLMAdapter.handles` accepts the config.

    Raises:
        UnsupportedModelError: if `architecture` is not registered, or no adapter of it takes
            the config (naming its vision tower and the towers each family takes).

    Example:
        >>> from vlm_lens.testing import build_tiny
        >>> config = build_tiny("llava").model.config
        >>> adapter_class_for_config("LlavaForConditionalGeneration", config).family
        'llava'
    """
    entries = _REGISTRY.get(architecture, [])
    for adapter in entries:
        if adapter.handles(config):
            return adapter
    if not entries:
        raise UnsupportedModelError(
            f"{architecture} is not a supported vision-language architecture. Supported: "
            f"{', '.join(supported_architectures())}."
        )
    towers = "; ".join(f"{', '.join(a.vision_towers) or 'any'} ({a.family})" for a in entries)
    raise UnsupportedModelError(
        f"{architecture} with a vision tower of model_type {vision_tower_type(config)!r} is "
        f"not supported: vlm_lens would misread its image layout. Supported towers of "
        f"{architecture}: {towers}. To add one, subclass vlm_lens.adapters.VLMAdapter with "
        "vision_towers set and register it (CONTRIBUTING.md, 'Adding a model family')."
    )


def adapter_for(model: nn.Module, processor: Any | None = None) -> VLMAdapter:
    """An instance of the adapter of `model` (see `adapter_class_for`)."""
    return adapter_class_for(model)(model, processor)


for _adapter in (
    ChameleonAdapter,
    Emu3Adapter,
    Gemma3Adapter,
    Idefics3Adapter,
    InternVLAdapter,
    JanusAdapter,
    LlavaAdapter,
    LlavaNextAdapter,
    LlavaOnevisionAdapter,
    Mistral3Adapter,
    PaliGemmaAdapter,
    PixtralAdapter,
    Qwen2VLAdapter,
    Qwen2_5_VLAdapter,
    SmolVLMAdapter,
    Qwen3VLAdapter,
):
    register_family(_adapter)

__all__ = [
    "ChameleonAdapter",
    "ChameleonArchitectureAdapter",
    "Emu3Adapter",
    "Gemma3Adapter",
    "Idefics3Adapter",
    "InternVLAdapter",
    "JanusAdapter",
    "JanusArchitectureAdapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "LlavaOnevisionAdapter",
    "Mistral3Adapter",
    "PaliGemmaAdapter",
    "PaliGemmaArchitectureAdapter",
    "PixtralAdapter",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "Qwen3VLAdapter",
    "SmolVLMAdapter",
    "VLMAdapter",
    "adapter_class_for",
    "adapter_class_for_config",
    "adapter_for",
    "register_family",
    "supported_architectures",
    "supported_families",
]

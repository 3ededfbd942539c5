"""Model-family adapters and their registry.

`adapter_for(model)` finds the adapter of a Hugging Face model; `register_family` adds a new
one (see CONTRIBUTING.md). Importing this package registers the TransformerLens architecture
adapters that TransformerLens lacks (Chameleon, Janus) through its public
``ArchitectureAdapterFactory.register_adapter``.

Example:
    >>> from vlm_lens.adapters import supported_families
    >>> supported_families()
    ('chameleon', 'emu3', 'janus', 'llava')
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

from vlm_lens.adapters.base import VLMAdapter
from vlm_lens.adapters.chameleon import ChameleonAdapter, ChameleonArchitectureAdapter
from vlm_lens.adapters.emu3 import Emu3Adapter
from vlm_lens.adapters.janus import JanusAdapter, JanusArchitectureAdapter
from vlm_lens.adapters.llava import LlavaAdapter
from vlm_lens.errors import UnsupportedModelError

_REGISTRY: dict[str, type[VLMAdapter]] = {}


def register_family(adapter: type[VLMAdapter]) -> type[VLMAdapter]:
    """Register a family adapter (usable as a class decorator).

    Its TransformerLens architecture adapter, if it names one, is registered with
    TransformerLens for each of its Hugging Face architectures.

    Example:
        >>> from vlm_lens.adapters import LlavaAdapter, register_family
        >>> register_family(LlavaAdapter) is LlavaAdapter
        True
    """
    for arch in adapter.architectures:
        _REGISTRY[arch] = adapter
        if adapter.tl_architecture_adapter is not None:
            ArchitectureAdapterFactory.register_adapter(arch, adapter.tl_architecture_adapter)
    return adapter


def supported_families() -> tuple[str, ...]:
    """Names of the registered families, sorted."""
    return tuple(sorted({a.family for a in _REGISTRY.values()}))


def supported_architectures() -> tuple[str, ...]:
    """Hugging Face class names with a registered adapter, sorted."""
    return tuple(sorted(_REGISTRY))


def adapter_class_for(model: nn.Module) -> type[VLMAdapter]:
    """The adapter class of a Hugging Face model, by its class name.

    The class itself decides, not ``config.architectures`` (which may be stale), and subclasses
    are not accepted: a subclass may change the forward the adapter relies on.

    Raises:
        UnsupportedModelError: naming the architecture, the supported ones and how to add one.
    """
    name = type(model).__name__
    if name in _REGISTRY:
        return _REGISTRY[name]
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


def adapter_for(model: nn.Module, processor: Any | None = None) -> VLMAdapter:
    """An instance of the adapter of `model` (see `adapter_class_for`)."""
    return adapter_class_for(model)(model, processor)


for _adapter in (ChameleonAdapter, Emu3Adapter, JanusAdapter, LlavaAdapter):
    register_family(_adapter)

__all__ = [
    "ChameleonAdapter",
    "ChameleonArchitectureAdapter",
    "Emu3Adapter",
    "JanusAdapter",
    "JanusArchitectureAdapter",
    "LlavaAdapter",
    "VLMAdapter",
    "adapter_class_for",
    "adapter_for",
    "register_family",
    "supported_architectures",
    "supported_families",
]

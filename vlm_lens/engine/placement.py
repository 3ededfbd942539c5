"""Where each part of a model runs: one device, or a ``device_map`` dispatched by accelerate.

A model loaded with ``from_pretrained(device_map=...)`` is *dispatched*: accelerate hooks each
module of the map so that it runs on its *execution device* (a GPU index, ``"cpu"``, or, for
modules whose weights are offloaded to ``"cpu"``/``"disk"``, the map's main device) and moves
its inputs there. `Placement` reads those execution devices once, before the bridge rewires the
model (the modules are matched by identity, so the bridge's new paths do not matter):

* ``input_device``: where the input embedding runs, so where `HookedVLM.prepare` puts a batch
  (a parameter's own device would say ``meta`` for offloaded weights);
* ``layer_devices``: where each decoder layer runs; `align_layer_inputs` moves the residual
  stream there *before* the block's first hook (``hook_resid_pre``) fires, so every hook of a
  layer sees tensors on that layer's device (accelerate alone would move them only when the
  wrapped HF layer runs, after ``hook_resid_pre``).

What a map may hold is checked by `check_device_map` before loading and by `check_dispatched`
for a model loaded elsewhere: ``"meta"`` (no weights at all) is refused with the fix.

Example:
    >>> from vlm_lens.testing import build_tiny
    >>> placement = Placement.of(build_tiny("llava").model)
    >>> placement.input_device, placement.dispatched
    (device(type='cpu'), False)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from vlm_lens.engine.compat import accelerate_execution_device
from vlm_lens.errors import VLMLensError

OFFLOAD_TARGETS = ("cpu", "disk")
"""``device_map`` values that keep weights off the accelerator (they run on the main device)."""


@dataclass(frozen=True)
class Placement:
    """The execution devices of a model: its input embedding's and each module's.

    Attributes:
        input_device: where the input embedding runs (where inputs go).
        device_map: the model's ``hf_device_map`` (``None`` when it is not dispatched).
        by_module: execution device by ``id`` of every module of the HF model.
    """

    input_device: torch.device
    device_map: Mapping[str, Any] | None
    by_module: Mapping[int, torch.device]

    @classmethod
    def of(cls, model: nn.Module) -> Placement:
        """Read the placement of a Hugging Face model (dispatched or not)."""
        device_map = getattr(model, "hf_device_map", None) or None
        default = _first_real_device(model)
        by_module: dict[int, torch.device] = {}
        _walk(model, accelerate_execution_device(model) or default, by_module)
        embed = _input_embeddings(model)
        input_device = by_module.get(id(embed), default) if embed is not None else default
        return cls(input_device, dict(device_map) if device_map else None, by_module)

    @property
    def dispatched(self) -> bool:
        """Whether accelerate dispatched the model over a ``device_map``."""
        return self.device_map is not None

    @property
    def devices(self) -> tuple[torch.device, ...]:
        """The distinct execution devices, in first-seen order."""
        return tuple(dict.fromkeys(self.by_module.values()))

    def device_of(self, module: nn.Module) -> torch.device:
        """Execution device of `module` (a module of the HF model), else the input device."""
        return self.by_module.get(id(module), self.input_device)

    @property
    def offloaded(self) -> tuple[str, ...]:
        """The ``device_map`` entries whose weights accelerate streams in for each call:
        ``"disk"`` ones, and ``"cpu"`` ones when the model runs on an accelerator."""
        if not self.device_map:
            return ()
        main = self.input_device.type
        return tuple(
            name
            for name, target in self.device_map.items()
            if str(target) == "disk" or (str(target) == "cpu" and main != "cpu")
        )


def check_device_map(device_map: Any, device: Any) -> None:
    """Refuse a ``device_map`` that vlm_lens cannot run, before any weight is loaded.

    Raises:
        ValueError: with `device` as well (accelerate places the modules; pick one), or for a
            map with ``"meta"`` (those modules would have no weights).

    Example:
        >>> check_device_map({"": "cpu"}, None)
        >>> check_device_map("auto", "cpu")
        Traceback (most recent call last):
        ...
        ValueError: device='cpu' and device_map='auto' were both given; ...
    """
    if device_map is None:
        return
    if device is not None:
        raise ValueError(
            f"device={device!r} and device_map={device_map!r} were both given; accelerate "
            "places every module by the device_map: pass one of them (device_map={'': "
            f"{str(device)!r}}} puts the whole model on {device!r})"
        )
    if isinstance(device_map, Mapping):
        _refuse_meta(device_map)
    elif not isinstance(device_map, (str, int, torch.device)):
        raise ValueError(
            f"device_map must be 'auto', 'balanced', 'balanced_low_0', 'sequential', a device "
            f"or a dict of module name to device; got {type(device_map).__name__}"
        )


def check_dispatched(model: nn.Module) -> None:
    """Refuse a model whose ``hf_device_map`` puts modules on ``"meta"`` (no weights)."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        _refuse_meta(device_map)


def align_layer_inputs(
    blocks: Any, placement: Placement, originals: list[nn.Module]
) -> list[RemovableHandle]:
    """Move each block's hidden states to its layer's execution device before its hooks fire.

    Only for a model that runs on more than one device (a single-device model gets no hook).

    Args:
        blocks: the bridge's blocks (``bridge.blocks``).
        placement: the model's `Placement`, read before the bridge was built.
        originals: the HF decoder layer of each block (``block.original_component``).

    Returns:
        The pre-hook handles (empty when nothing needs moving).
    """
    if len(placement.devices) < 2:
        return []
    handles = []
    for block, layer in zip(blocks, originals, strict=True):
        device = placement.device_of(layer)
        handles.append(block.register_forward_pre_hook(_mover(device), with_kwargs=True))
    return handles


@contextmanager
def explain_offload_errors(placement: Placement | None) -> Iterator[None]:
    """Turn the error of an offloaded module read outside its own ``forward`` into one that
    names the offloaded modules and the fix.

    Accelerate loads an offloaded module's weights only around its ``forward``; code that
    calls another method of it (Chameleon's VQ image tokenizer: ``encode``) reads ``meta``
    placeholders and torch fails with "Tensor on device meta ..." (the plain Hugging Face
    model fails the same way).

    Raises:
        VLMLensError: for such an error when the model has offloaded modules.
    """
    try:
        yield
    except (RuntimeError, NotImplementedError) as error:
        if placement is None or not placement.offloaded or "meta" not in str(error):
            raise
        raise VLMLensError(
            f"a module offloaded by the device_map read its weights outside its own forward, "
            f"where accelerate does not load them ({error}). Offloaded: "
            f"{', '.join(placement.offloaded)}. Map the module that failed (see the "
            "traceback; Chameleon's model.vqmodel is one) to a device that holds its weights "
            "(a GPU index, or 'cpu' when the model runs on CPU) instead of 'disk'/'cpu' "
            "offload"
        ) from error


def _mover(device: torch.device) -> Any:
    def move(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        moved = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
        hidden = kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor):
            kwargs = {**kwargs, "hidden_states": hidden.to(device)}
        return moved, kwargs

    return move


def _refuse_meta(device_map: Mapping[str, Any]) -> None:
    meta = sorted(str(k) or "''" for k, v in device_map.items() if str(v).lower() == "meta")
    if meta:
        raise ValueError(
            f"device_map puts {', '.join(meta)} on 'meta', which holds no weights, so the "
            "model could not compute; map them to a GPU index, 'cpu', or 'disk' (with "
            "offload_folder=...) instead"
        )


def _walk(module: nn.Module, inherited: torch.device, out: dict[int, torch.device]) -> None:
    device = accelerate_execution_device(module) or inherited
    out[id(module)] = device
    for child in module.children():
        _walk(child, device, out)


def _first_real_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def _input_embeddings(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_input_embeddings", None)
    if not callable(get):
        return None
    try:
        embed = get()
    except (AttributeError, NotImplementedError):
        return None
    return embed if isinstance(embed, nn.Module) else None

"""Content digests: 128-bit xxHash (XXH3) of tensors, files and a model's weights.

A digest hashes the raw bytes (``tensor.view(torch.uint8)``) together with the dtype and shape,
so two tensors get the same digest only if they are bit for bit equal (up to a 2**-128 chance
of an accidental collision; XXH3 is not meant to resist a forger, only to catch changes).
XXH3 runs at several GB/s on one core, so hashing every weight of a 7B model costs seconds
(`weights_digests`; measured figures in README, "Dataset runs").

Tensors on an accelerator are copied to the CPU in slices of `SLICE_BYTES`, so hashing never
needs more host memory than one slice. Parameters that accelerate offloaded (on the ``meta``
device, their values in the offload hook's ``weights_map``) are hashed from there.

Example:
    >>> import torch
    >>> a = torch.arange(6.0)
    >>> tensor_digest(a) == tensor_digest(a.clone()), tensor_digest(a) == tensor_digest(a + 0.5)
    (True, False)
    >>> tensor_digest(a) == tensor_digest(a.double())  # same values, other bytes
    False
    >>> len(tensor_digest(a))
    32
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
import xxhash
from torch import Tensor, nn

from vlm_lens.engine.compat import accelerate_hooks

SLICE_BYTES = 256 * 2**20
"""Bytes of an accelerator tensor copied to the host at a time while hashing."""

_FILE_BLOCK = 4 * 2**20


def new_hasher() -> Any:
    """A fresh streaming XXH3-128 hasher (``update(bytes)``, ``hexdigest()``)."""
    return xxhash.xxh3_128()


def update_with_tensor(hasher: Any, tensor: Tensor) -> None:
    """Feed `tensor`'s dtype, shape and raw bytes to `hasher`.

    Raises:
        ValueError: for a tensor without data (``meta`` device).
    """
    if tensor.device.type == "meta":
        raise ValueError("a tensor on the meta device has no values to hash")
    tensor = tensor.detach()
    hasher.update(f"{tensor.dtype}:{tuple(tensor.shape)}:".encode())
    flat = tensor.reshape(-1) if tensor.is_contiguous() else tensor.contiguous().reshape(-1)
    if flat.numel() == 0:
        return
    step = max(1, SLICE_BYTES // flat.element_size())
    for start in range(0, flat.numel(), step):
        part = flat[start : start + step]
        if part.device.type != "cpu":
            part = part.to("cpu")
        hasher.update(part.view(torch.uint8).numpy())


def tensor_digest(tensor: Tensor) -> str:
    """Hex digest of a tensor's dtype, shape and bytes (see the module docstring)."""
    hasher = new_hasher()
    update_with_tensor(hasher, tensor)
    return str(hasher.hexdigest())


def file_digest(path: str | os.PathLike[str]) -> str:
    """Hex digest of a file's bytes, read in blocks (never the whole file at once).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.bin")
        >>> _ = open(path, "wb").write(b"abc")
        >>> file_digest(path) == xxhash.xxh3_128(b"abc").hexdigest()
        True
    """
    hasher = new_hasher()
    with open(path, "rb") as handle:
        while block := handle.read(_FILE_BLOCK):
            hasher.update(block)
    return str(hasher.hexdigest())


def weights_digests(module: nn.Module) -> dict[str, str]:
    """``{name: digest}`` of every parameter and buffer of `module` (non-persistent buffers
    such as rotary frequencies included; a tied weight once, under its first name).

    Every value counts, so two models get equal dicts only if all their weights are bit for
    bit equal.

    Raises:
        ValueError: for a ``meta`` tensor whose values cannot be found (naming it).

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> sorted(weights_digests(layer))
        ['bias', 'weight']
        >>> before = weights_digests(layer)
        >>> with torch.no_grad():
        ...     layer.weight[-1, -1] += 1  # the last value only
        >>> after = weights_digests(layer)
        >>> after["weight"] == before["weight"], after["bias"] == before["bias"]
        (False, True)
    """
    out: dict[str, str] = {}
    for name, tensor in _named_tensors(module):
        if tensor.device.type == "meta":
            tensor = _offloaded_value(module, name)
        out[name] = tensor_digest(tensor)
    return out


def _named_tensors(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
    seen: set[int] = set()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        yield name, tensor


def _offloaded_value(root: nn.Module, name: str) -> Tensor:
    """The value of an accelerate-offloaded tensor: the ``weights_map`` of the nearest
    enclosing module with an offload hook, under the name relative to that module."""
    parts = name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        owner = root.get_submodule(".".join(parts[:depth])) if depth else root
        key = ".".join(parts[depth:])
        for hook in accelerate_hooks(owner):
            weights = getattr(hook, "weights_map", None)
            if weights is not None and key in weights:
                value = weights[key]
                if isinstance(value, Tensor) and value.device.type != "meta":
                    return value
    raise ValueError(
        f"weight {name!r} is on the meta device and no accelerate offload map holds it; load "
        "the model's weights (or offload them with accelerate) before running it"
    )

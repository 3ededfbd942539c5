"""Steering: a difference-of-means vector between two sets of prompts, added at a role.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("llava")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> a = model.prepare(images=sample_image(seed=0, size=tiny.image_size), text=tiny.prompt)
    >>> b = model.prepare(images=sample_image(seed=1, size=tiny.image_size), text=tiny.prompt)
    >>> vector = steering_vector(model, [a], [b], positions="gate", layer=1)
    >>> vector.shape
    torch.Size([32])
    >>> logits = model.run_with_hooks(b, fwd_hooks=steer(b, vector, layers=1, scale=2.0))
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens import hooks as hook_names
from vlm_lens.batch import Batch, attention_of, layout_of
from vlm_lens.engine.intervention import Intervention, first_true
from vlm_lens.engine.query_block import query_offset
from vlm_lens.errors import VLMInputError
from vlm_lens.layout import TokenLayout
from vlm_lens.positions import PositionSpec, covers_generated, describe, select


@runtime_checkable
class _Runs(Protocol):
    def run_with_hooks(self, batch: Batch, *, fwd_hooks: Any, **kwargs: Any) -> Any: ...


def mean_activation(
    model: _Runs,
    batches: Iterable[Batch],
    *,
    positions: PositionSpec,
    layer: int,
    site: str = "resid_pre",
) -> Float[Tensor, " d_model"]:
    """Mean of the `site` activation at `layer` over every selected position of every batch.

    Sums inside the hook (float64), so nothing of size ``[batch, pos, d_model]`` is kept.

    Example:
        >>> mean = mean_activation(model, [a, b], positions="gate", layer=1)  # doctest: +SKIP
        >>> mean.shape  # doctest: +SKIP
        torch.Size([32])
    """
    name = hook_names.layer_hook(site, layer)
    total: Tensor | None = None
    count = 0
    for batch in batches:
        mask = select(positions, batch.layout)

        def accumulate(tensor: Tensor, hook: Any, mask: Tensor = mask) -> None:  # noqa: ARG001
            nonlocal total, count
            picked = tensor[mask.to(tensor.device)].double().sum(dim=0)
            total = picked if total is None else total + picked
            count += int(mask.sum())

        with torch.no_grad():
            model.run_with_hooks(batch, fwd_hooks=[(name, accumulate)], return_type=None)
    if total is None or count == 0:
        raise VLMInputError(f"no position matched {describe(positions)!r} in the batches")
    return (total / count).float()


def steering_vector(
    model: _Runs,
    batches_a: Iterable[Batch],
    batches_b: Iterable[Batch],
    *,
    positions: PositionSpec = "gate",
    layer: int,
    site: str = "resid_pre",
) -> Float[Tensor, " d_model"]:
    """Difference of means, A minus B, of `site` at `layer` over the `positions` of each set.

    Adding it to B's activations (`steer`) moves them toward A.

    Example:
        >>> vector = steering_vector(model, [cats], [dogs], layer=12)  # doctest: +SKIP
        >>> hooks = steer(dogs, vector, layers=12)  # moves the gate toward cats  # doctest: +SKIP
    """
    mean_a = mean_activation(model, batches_a, positions=positions, layer=layer, site=site)
    mean_b = mean_activation(model, batches_b, positions=positions, layer=layer, site=site)
    return mean_a - mean_b


def steer(
    batch: Batch | TokenLayout,
    vector: Float[Tensor, " d_model"],
    *,
    positions: PositionSpec = "gate",
    layers: int | Iterable[int],
    scale: float = 1.0,
    site: str = "resid_pre",
) -> Intervention:
    """Hooks that add ``scale * vector`` to `site` at `positions` in each of `layers`.

    Generated tokens are steered too when `positions` covers text (``"text"``, ``"all"``).

    Args:
        batch: the batch the hooks will run on (or its layout).
        vector: ``[d_model]``, e.g. from `steering_vector`.
        positions: where to add it.
        layers: one layer or several.
        scale: multiplier.
        site: a ``[batch, pos, d_model]`` hook kind (``"resid_pre"``, ``"resid_post"``...).

    Example:
        >>> hooks = steer(b, vector, positions="gate", layers=[0, 1], scale=4.0)  # doctest: +SKIP
        >>> logits = model.run_with_hooks(b, fwd_hooks=hooks)  # doctest: +SKIP
    """
    if not isinstance(vector, Tensor) or vector.ndim != 1:
        shape = tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__
        raise VLMInputError(
            f"a steering vector must be one [d_model] tensor, got {shape}; a scalar or a [1] "
            "tensor would be added to every dimension: pass vector * torch.ones(d_model) if "
            "that is meant"
        )
    layout = layout_of(batch)
    mask = select(positions, layout)
    generated = covers_generated(positions, layout)
    layer_list = [layers] if isinstance(layers, int) else list(layers)
    length = layout.shape[1]

    def add(tensor: Tensor, hook: Any) -> Tensor:
        if vector.shape[0] != tensor.shape[-1]:
            raise VLMInputError(
                f"{hook.name}: the steering vector has {vector.shape[0]} dimensions but the "
                f"site holds {tensor.shape[-1]}; build it at a [batch, pos, d_model] site of "
                "this model (steering_vector)"
            )
        offset = query_offset()
        too_long = tensor.shape[1] > length or (
            offset is not None and offset + tensor.shape[1] != length
        )
        if tensor.shape[0] != layout.shape[0] or too_long:
            raise VLMInputError(
                f"{hook.name}: steering was built for a batch of shape {layout.shape} but the "
                f"model ran {tuple(tensor.shape[:2])}; build it from the batch you run"
            )
        if offset is not None:  # a suffix pass on a cached prefix (HookedVLM.run_suffix)
            if bool(mask[:, :offset].any()):
                raise VLMInputError(
                    f"{hook.name}: steering changes positions inside the cached prefix "
                    f"(< {offset}); reuse a prefix only up to the intervention's earliest position"
                )
            where = mask[:, offset:]
        elif tensor.shape[1] == length:
            where = mask
        else:  # a cached generation step: every position is a generated token
            where = generated[:, None].expand(-1, tensor.shape[1])
        delta = (scale * vector).to(tensor.device, tensor.dtype)
        return torch.where(where.to(tensor.device)[..., None], tensor + delta, tensor)

    hooks = [(hook_names.layer_hook(site, layer), add) for layer in layer_list]
    return Intervention(hooks, attention_of(batch).earliest_affected(first_true(mask, length)))

"""Per-layer representations of one role per prompt, for the representation analyses.

`representations` runs a few batches in memory and returns ``[layers, n_prompts, d_model]``,
the input of `neighbourhood_overlap` and `modality_gap`. For datasets too large for memory use
`vlm_lens.data.run_dataset` with the same `vlm_lens.data.Probe` and ``store.load(name)``.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.positions import after
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("chameleon")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> images = [sample_image(seed=s, size=tiny.image_size) for s in range(3)]
    >>> batch = model.prepare(images=images, text=[tiny.prompt] * 3)
    >>> representations(model, [batch], positions="gate").shape
    torch.Size([2, 3, 32])
    >>> representations(model, [batch], positions="image", reduce="mean").shape
    torch.Size([2, 3, 32])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens.batch import Batch
from vlm_lens.data.collect import Probe, collect
from vlm_lens.errors import VLMInputError
from vlm_lens.positions import PositionSpec


def representations(
    model: Any,
    batches: Batch | Iterable[Batch],
    *,
    positions: PositionSpec = "gate",
    reduce: str = "each",
    site: str = "resid_post",
    layers: Sequence[int] | None = None,
    seed: int = 0,
) -> Float[Tensor, "layers n d_model"]:
    """One vector per prompt and layer: `site` at `positions`, reduced as `reduce`.

    Args:
        model: a `HookedVLM`.
        batches: one batch or several; prompts are numbered in order across batches, and
            ``reduce="random"`` draws depend only on `seed` and that number.
        positions: a `vlm_lens.positions.PositionSpec` (``"gate"``, ``"last"``,
            ``after("text", "gate")``...).
        reduce: ``"each"`` (exactly one position per prompt), ``"mean"`` or ``"random"``.
        site: a `vlm_lens.hooks.LAYER_HOOKS` kind with a ``[batch, pos, d_model]`` tensor.
        layers: layers to keep (default all).
        seed: seed of the random draws.

    Returns:
        ``[layers, n_prompts, d_model]``, float32 on the CPU.

    Example:
        >>> x = representations(model, batches, positions="image", reduce="mean")  # doctest: +SKIP
        >>> neighbourhood_overlap(x, labels, k=30).to_frame()  # doctest: +SKIP
    """
    probe = Probe("x", site=site, positions=positions, reduce=reduce, layers=layers)
    batch_list = [batches] if isinstance(batches, Batch) else list(batches)
    parts: list[Tensor] = []
    offset = 0
    for batch in batch_list:
        indices = list(range(offset, offset + len(batch)))
        parts.append(collect(model, batch, [probe], seed=seed, example_indices=indices)["x"])
        offset += len(batch)
    if not parts:
        raise VLMInputError("representations needs at least one batch")
    return torch.cat(parts, dim=0).transpose(0, 1).contiguous()

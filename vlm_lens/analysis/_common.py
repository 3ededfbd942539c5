"""Shared plumbing of the analyses: which layers, which batches, one hooked forward.

Private to `vlm_lens.analysis`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from vlm_lens.batch import Batch
from vlm_lens.data.distributed import map_shared
from vlm_lens.model import HookedVLM
from vlm_lens.types import HookList

R = TypeVar("R")


def resolve_layers(model: HookedVLM, layers: Iterable[int] | int | None) -> tuple[int, ...]:
    """Sorted, de-duplicated layer indices (all layers for ``None``; negatives count from the end).

    Raises:
        ValueError: for a layer outside ``[-n_layers, n_layers)`` or an empty selection.
    """
    n_layers = int(model.cfg.n_layers)
    if layers is None:
        return tuple(range(n_layers))
    items = [layers] if isinstance(layers, int) else list(layers)
    out = set()
    for layer in items:
        valid = isinstance(layer, int) and not isinstance(layer, bool)
        if not valid or not -n_layers <= layer < n_layers:
            raise ValueError(
                f"layers must be ints in [-{n_layers}, {n_layers}) for this model "
                f"({n_layers} layers), got {layer!r}"
            )
        out.add(layer % n_layers)
    if not out:
        raise ValueError("layers is empty; pass None for every layer")
    return tuple(sorted(out))


def iter_batches(batches: Batch | Iterable[Batch], *, progress: bool, desc: str) -> Iterator[Batch]:
    """Yield the batches (one `Batch` or an iterable of them) with an optional tqdm bar.

    Raises:
        TypeError: when an item is not a `Batch`.
    """
    items: Iterable[Batch] = [batches] if isinstance(batches, Batch) else batches
    for batch in tqdm(items, desc=desc, disable=not progress):
        if not isinstance(batch, Batch):
            raise TypeError(
                f"expected vlm_lens Batch objects (from model.prepare), got {type(batch).__name__}"
            )
        yield batch


def map_batches(
    step: Callable[[Batch], R],
    batches: Batch | Iterable[Batch],
    provenance: Any,
    *,
    progress: bool,
    desc: str,
) -> list[R]:
    """`step` on every batch (read lazily, each recorded in `provenance`), shared by the ranks
    inside `vlm_lens.data.distributed.sharded` (`map_shared`)."""
    return map_shared(
        step,
        iter_batches(batches, progress=False, desc=desc),
        desc=desc,
        progress=progress,
        on_every=provenance.add,
    )


def run(model: HookedVLM, batch: Batch, fwd_hooks: HookList, layers: tuple[int, ...]) -> None:
    """Forward `batch` with `fwd_hooks` (no grad), stopping after the last layer needed."""
    kwargs: dict[str, Any] = {}
    if max(layers) + 1 < int(model.cfg.n_layers):
        kwargs["stop_at_layer"] = max(layers) + 1
    with torch.no_grad():
        model.run_with_hooks(batch, fwd_hooks=fwd_hooks, **kwargs)

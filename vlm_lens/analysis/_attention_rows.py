"""Shared machinery of the analyses: layers, batches, the image side, and attention row sums.

Private to `vlm_lens.analysis`. The one non-trivial piece is `key_attention_hooks`: hooks on
``blocks.{l}.attn.hook_pattern`` that reduce the ``[batch, head, q, k]`` pattern *inside the hook*
to a ``[batch, k]`` vector per layer (mean over the selected query rows, sum over heads) and keep
only that, so no analysis ever holds a full attention pattern.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from vlm_lens import hooks
from vlm_lens.batch import Batch
from vlm_lens.layout import TokenLayout
from vlm_lens.model import HookedVLM
from vlm_lens.positions import PositionSpec, select

Hook = tuple[str, Callable[..., Any]]


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


def image_side(layout: TokenLayout) -> Bool[Tensor, "batch pos"]:
    """The paper's image-side key positions: every position that belongs to an image
    (``image_index >= 0``: image tokens, row ends, the gate, closing specials), minus the opening
    specials (``image_start``: BOI and Emu3's size header), as the paper drops BOS/BOI."""
    return (layout.image_index >= 0) & ~layout.mask("image_start") & ~layout.mask("pad")


def query_rows(
    queries: PositionSpec, layout: TokenLayout, *, what: str = "attention"
) -> list[Tensor]:
    """Query positions of each sequence (CPU long tensors).

    Raises:
        ValueError: when a sequence has no query position or no image-side position.
    """
    mask = select(queries, layout)
    side = image_side(layout)
    rows = []
    for b in range(mask.shape[0]):
        if not bool(side[b].any()):
            raise ValueError(
                f"sequence {b} of the batch has no image; {what} needs one image per prompt"
            )
        if not bool(mask[b].any()):
            raise ValueError(
                f"sequence {b} of the batch has no query position (default: text after the "
                f"gate); add text after the image or pass queries="
            )
        rows.append(mask[b].nonzero().flatten())
    return rows


def key_attention_hooks(
    layers: Iterable[int], rows: list[Tensor], store: dict[int, Tensor]
) -> list[Hook]:
    """Hooks that store, per layer, the attention each key receives from the query `rows`.

    For layer ``l`` the hook on ``hooks.pattern(l)`` writes
    ``store[l][b, k] = sum_h mean_{i in rows[b]} pattern[b, h, i, k]`` (float64, CPU) and returns
    ``None``: the pattern is neither modified nor retained.

    Args:
        layers: layers to hook.
        rows: per sequence, the query positions.
        store: dict the hooks fill.
    """
    hook_list: list[Hook] = []
    for layer in layers:
        hook_list.append((hooks.pattern(layer), _key_attention_fn(layer, rows, store)))
    return hook_list


def _key_attention_fn(
    layer: int, rows: list[Tensor], store: dict[int, Tensor]
) -> Callable[..., None]:
    cache: dict[torch.device, list[Tensor]] = {}

    def hook_fn(pattern: Float[Tensor, "batch head q k"], hook: Any) -> None:  # noqa: ARG001
        if pattern.shape[0] != len(rows):
            raise ValueError(
                f"attention pattern has batch size {pattern.shape[0]} but the batch has "
                f"{len(rows)} sequences"
            )
        longest = max(int(r.max()) for r in rows)
        if pattern.shape[2] <= longest:
            raise ValueError(
                f"attention pattern has {pattern.shape[2]} query rows; the analysis needs the "
                "full prompt in one forward pass (no KV cache)"
            )
        idx = cache.setdefault(pattern.device, [r.to(pattern.device) for r in rows])
        out = torch.stack(
            [
                pattern[b].index_select(1, i).sum(dim=(0, 1), dtype=torch.float32) / len(i)
                for b, i in enumerate(idx)
            ]
        )
        store[layer] = out.detach().to("cpu", torch.float64)

    return hook_fn


def run(model: HookedVLM, batch: Batch, fwd_hooks: list[Hook], layers: tuple[int, ...]) -> None:
    """Forward `batch` with `fwd_hooks` (no grad), stopping after the last layer needed."""
    kwargs: dict[str, Any] = {}
    if max(layers) + 1 < int(model.cfg.n_layers):
        kwargs["stop_at_layer"] = max(layers) + 1
    with torch.no_grad():
        model.run_with_hooks(batch, fwd_hooks=fwd_hooks, **kwargs)

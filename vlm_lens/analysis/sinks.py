"""Massive activations and attention sinks at image-side positions (Kang et al. 2025).

Some visual tokens take a large share of the text's attention whatever the image shows; they carry
*massive activations* in a few residual dimensions (Kang et al., "See What You Are Told", ICLR
2025). "The Narrow Gate" code flags activations larger than 50 times the mean. `find_sinks`
measures, for every image-side position and layer:

* ``ratio = max_d |h[p, d]| / mean_{q, d'} |h[q, d']|`` where ``h`` is ``resid_post`` of that
  layer for that prompt, ``p`` the position, and the mean runs over *every real position* of the
  prompt (BOS, image, text; padding excluded) and every model dimension;
* ``dim``: the dimension attaining the maximum (``SinkResult.dims`` lists every dimension above
  the threshold);
* ``attention``: the position's share of the text's attention to the image, f^l_j of
  `vlm_lens.analysis.attention_share` for this prompt (mean over query rows, sum over heads,
  normalised over the prompt's image-side positions);
* ``is_sink = ratio > threshold``.

Image-side positions are those of `attention_share`: image tokens, row ends, the gate and
closing specials of every image (BOI and Emu3's size header excluded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens import hooks
from vlm_lens.analysis._common import iter_batches, resolve_layers, run
from vlm_lens.analysis.persist import register_result
from vlm_lens.analysis.provenance import Provenance
from vlm_lens.batch import Batch, attention_of
from vlm_lens.engine.attention_rows import image_side, key_attention_hooks, query_rows
from vlm_lens.model import HookedVLM
from vlm_lens.positions import PositionSpec, after

COLUMNS = ("sequence", "position", "role", "layer", "ratio", "dim", "attention", "is_sink")


@register_result
@dataclass(frozen=True)
class SinkResult:
    """One row per (prompt, layer, image-side position), ordered by prompt, layer, position.

    Attributes:
        layers: the layers measured.
        threshold: the ratio above which a position is a sink.
        sequence: ``[rows]`` prompt index, counted over all batches.
        position: ``[rows]`` position in the prompt's sequence.
        role: ``[rows]`` primary role of the position.
        layer: ``[rows]``.
        ratio: ``[rows]`` max |resid_post| of the position over the prompt's mean |resid_post|.
        dim: ``[rows]`` the dimension of the maximum.
        attention: ``[rows]`` the position's share of text→image attention (f^l_j).
        is_sink: ``[rows]`` ``ratio > threshold``.
        dims: per row, every dimension whose |activation| exceeds ``threshold`` times the mean,
            largest first (empty unless a sink).
        meta: what produced the result: model, inputs, settings (`vlm_lens.analysis.provenance`);
            `save_result` keeps it.

    Example:
        >>> result = find_sinks(model, batches, threshold=50.0)  # doctest: +SKIP
        >>> result.sinks(), result.sink_dims()  # doctest: +SKIP
    """

    layers: tuple[int, ...]
    threshold: float
    sequence: np.ndarray
    position: np.ndarray
    role: tuple[str, ...]
    layer: np.ndarray
    ratio: np.ndarray
    dim: np.ndarray
    attention: np.ndarray
    is_sink: np.ndarray
    dims: tuple[tuple[int, ...], ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """Columns ``sequence, position, role, layer, ratio, dim, attention, is_sink``."""
        data = {name: getattr(self, name) for name in COLUMNS}
        data["role"] = np.asarray(self.role, dtype=object)
        return pd.DataFrame(data)

    def sinks(self) -> pd.DataFrame:
        """`to_frame` restricted to the flagged rows."""
        frame = self.to_frame()
        return frame[frame["is_sink"]].reset_index(drop=True)

    def sink_dims(self) -> dict[int, list[int]]:
        """Per layer, the sorted dimensions with a massive activation at some sink position
        (Kang et al.'s "sink dimensions")."""
        out: dict[int, set[int]] = {layer: set() for layer in self.layers}
        for layer, dims in zip(self.layer.tolist(), self.dims, strict=True):
            out[layer].update(dims)
        return {layer: sorted(dims) for layer, dims in out.items()}


def find_sinks(
    model: HookedVLM,
    batches: Batch | Iterable[Batch],
    *,
    layers: Iterable[int] | None = None,
    threshold: float = 50.0,
    queries: PositionSpec = after("text", "gate"),  # noqa: B008 (immutable closure)
    progress: bool = False,
) -> SinkResult:
    """Flag image-side positions with massive activations and report the attention they get.

    Hooks ``resid_post`` (reduced in the hook to per-position maxima and the prompt's mean) and
    the attention pattern (reduced as in `attention_share`) of each selected layer.

    Args:
        model: the `HookedVLM`.
        batches: one `Batch` or an iterable of batches.
        layers: layers to measure (default: all).
        threshold: ratio above which a position is flagged (the paper's code uses 50).
        queries: query rows of the attention column (default: text after the last gate).
        progress: show a progress bar over batches.

    Returns:
        A `SinkResult`.

    Raises:
        ValueError: for a prompt without an image or query rows, or bad layers.

    Example:
        >>> from vlm_lens import HookedVLM
        >>> from vlm_lens.analysis.sinks import find_sinks
        >>> from vlm_lens.testing import build_tiny, sample_image
        >>> tiny = build_tiny("chameleon")
        >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
        >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
        >>> result = find_sinks(model, batch)
        >>> result.to_frame().columns.tolist()
        ['sequence', 'position', 'role', 'layer', 'ratio', 'dim', 'attention', 'is_sink']
        >>> len(result.sinks())  # a random tiny model has no massive activations
        0
    """
    layer_ids = resolve_layers(model, layers)
    rows: dict[str, list[Any]] = {name: [] for name in (*COLUMNS, "dims")}
    provenance = Provenance(
        "find_sinks", model, layers=layer_ids, threshold=threshold, queries=queries
    )
    offset = 0
    for batch in iter_batches(batches, progress=progress, desc="find_sinks"):
        provenance.add(batch)
        layout = batch.layout
        queries_b = query_rows(queries, layout, what="find_sinks")
        side = image_side(layout)
        real = ~layout.mask("pad")
        attention: dict[int, Tensor] = {}
        massive: dict[int, dict[str, Tensor]] = {}
        fwd_hooks = key_attention_hooks(
            model, layout, layer_ids, queries_b, attention, attention_of(batch)
        )
        fwd_hooks += [
            (hooks.resid_post(layer), _massive_fn(layer, side, real, threshold, massive))
            for layer in layer_ids
        ]
        run(model, batch, fwd_hooks, layer_ids)
        seq_idx, pos_idx = side.nonzero(as_tuple=True)
        roles = [layout.primary_roles(b) for b in range(len(batch))]
        for b in range(len(batch)):
            sel = (seq_idx == b).nonzero().flatten()
            positions = pos_idx[sel]
            for layer in layer_ids:
                share = attention[layer][b, positions]
                stats = massive[layer]
                ratio = stats["ratio"][sel]
                rows["sequence"].append(np.full(len(sel), offset + b))
                rows["position"].append(positions.numpy())
                rows["role"].extend(roles[b][p] for p in positions.tolist())
                rows["layer"].append(np.full(len(sel), layer))
                rows["ratio"].append(ratio.numpy())
                rows["dim"].append(stats["dim"][sel].numpy())
                rows["attention"].append((share / share.sum()).numpy())
                rows["is_sink"].append((ratio > threshold).numpy())
                hits = _hits_by_row(stats)
                rows["dims"].extend(hits.get(row, ()) for row in sel.tolist())
        offset += len(batch)
    return SinkResult(
        layers=layer_ids,
        threshold=float(threshold),
        sequence=np.concatenate(rows["sequence"]).astype(np.int64),
        position=np.concatenate(rows["position"]).astype(np.int64),
        role=tuple(rows["role"]),
        layer=np.concatenate(rows["layer"]).astype(np.int64),
        ratio=np.concatenate(rows["ratio"]),
        dim=np.concatenate(rows["dim"]).astype(np.int64),
        attention=np.concatenate(rows["attention"]),
        is_sink=np.concatenate(rows["is_sink"]),
        dims=tuple(rows["dims"]),
        meta=provenance.meta(),
    )


def _hits_by_row(stats: dict[str, Tensor]) -> dict[int, tuple[int, ...]]:
    """Row -> dims above the threshold, largest ratio first."""
    found: dict[int, list[tuple[float, int]]] = {}
    for row, dim, ratio in zip(
        stats["over_row"].tolist(),
        stats["over_dim"].tolist(),
        stats["over_ratio"].tolist(),
        strict=True,
    ):
        found.setdefault(row, []).append((ratio, dim))
    return {row: tuple(d for _, d in sorted(hits, reverse=True)) for row, hits in found.items()}


def _massive_fn(
    layer: int,
    side: Tensor,
    real: Tensor,
    threshold: float,
    store: dict[int, dict[str, Tensor]],
) -> Callable[..., None]:
    """Hook on ``resid_post``: per image-side position, max |h| / prompt mean |h|, its argmax
    dim, and every (row, dim, ratio) above the threshold; stores only those."""

    def hook_fn(resid: Float[Tensor, "batch pos d_model"], hook: Any) -> None:  # noqa: ARG001
        device = resid.device
        absolute = resid.detach().abs().to(torch.float64)
        weight = real.to(device, torch.float64)  # [batch, pos]
        mean = torch.einsum("bpd,bp->b", absolute, weight) / (weight.sum(1) * resid.shape[-1])
        seq_idx, pos_idx = side.to(device).nonzero(as_tuple=True)
        ratios = absolute[seq_idx, pos_idx] / mean[seq_idx, None]  # [rows, d_model]
        top, dim = ratios.max(dim=-1)
        over = (ratios > threshold).nonzero()  # [hits, (row, dim)]
        store[layer] = {
            "ratio": top.cpu(),
            "dim": dim.cpu(),
            "over_row": over[:, 0].cpu(),
            "over_dim": over[:, 1].cpu(),
            "over_ratio": ratios[over[:, 0], over[:, 1]].cpu(),
        }

    return hook_fn

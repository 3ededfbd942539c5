"""Logit lens at chosen positions: what each layer's residual would predict if decoding stopped.

``model.resid_to_logits`` (final norm + unembedding, the model's own output transform included)
is applied to ``resid_post`` of every selected layer at the selected positions. Applied at the last
layer it reproduces the model's logits up to float rounding (the unembedding of the gathered
``[n, d_model]`` rows is not bit-for-bit the same matrix product as the model's on the full
``[batch, pos, d_model]`` tensor; about 1e-7 relative in float32). At image positions
(``positions="image"``) this is Neo et al.'s logit lens on visual tokens:
`LogitLensResult.summary` gives per layer the mean top-1 probability, the mean entropy, the most
common top-1 token and, for a token set, the fraction of positions whose top-1 is in it.

The hooks gather the selected rows of ``resid_post`` (``[n_positions, d_model]`` per layer);
the full cache is never kept, and logits are computed one layer at a time after the forward pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens import hooks
from vlm_lens.analysis._common import resolve_layers, run
from vlm_lens.analysis.persist import register_result
from vlm_lens.analysis.provenance import Provenance
from vlm_lens.batch import Batch
from vlm_lens.model import HookedVLM
from vlm_lens.positions import PositionSpec, describe, select


@register_result
@dataclass(frozen=True)
class LogitLensResult:
    """Top-k predictions of the logit lens for each (layer, selected position).

    Selected positions are listed in order of (sequence, position); arrays index
    ``[layer, row, ...]`` with ``row`` the selected position.

    Attributes:
        layers: the layers read.
        sequence: ``[rows]`` batch index of each selected position.
        position: ``[rows]`` position in the sequence.
        role: ``[rows]`` primary role of each position (``layout.primary_roles``).
        top_ids: ``[layers, rows, k]`` token ids, most probable first.
        top_probs: ``[layers, rows, k]`` their probabilities (softmax of the lens logits).
        top_tokens: ``[layers, rows, k]`` decoded tokens (object array), or ``None`` without a
            tokenizer.
        entropy: ``[layers, rows]`` entropy (nats) of the lens distribution.
        tokens: the tracked token ids, or ``None``.
        token_logprobs: ``[layers, rows, len(tokens)]`` log-probabilities of `tokens`, or ``None``.
        meta: what produced the result: model, inputs, settings (`vlm_lens.analysis.provenance`);
            `save_result` keeps it.

    Example:
        >>> lens = logit_lens(model, batch, positions="image", top_k=3)  # doctest: +SKIP
        >>> lens.top_ids.shape, lens.max_prob.shape  # 2 layers, 16 image tokens  # doctest: +SKIP
        ((2, 16, 3), (2, 16))
        >>> lens.summary(token_set=class_token_ids)  # doctest: +SKIP
    """

    layers: tuple[int, ...]
    sequence: np.ndarray
    position: np.ndarray
    role: tuple[str, ...]
    top_ids: np.ndarray
    top_probs: np.ndarray
    top_tokens: np.ndarray | None
    entropy: np.ndarray
    tokens: tuple[int, ...] | None
    token_logprobs: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def max_prob(self) -> np.ndarray:
        """``[layers, rows]`` probability of the top-1 token."""
        return self.top_probs[..., 0]

    def _index(self) -> dict[str, np.ndarray]:
        n_layers, n_rows = self.top_ids.shape[:2]
        return {
            "sequence": np.tile(self.sequence, n_layers),
            "position": np.tile(self.position, n_layers),
            "role": np.tile(np.asarray(self.role, dtype=object), n_layers),
            "layer": np.repeat(np.asarray(self.layers), n_rows),
        }

    def to_frame(self) -> pd.DataFrame:
        """Long format, one row per (layer, position, rank): ``sequence, position, role, layer,
        rank, token_id, token, prob`` (``token`` is ``None`` without a tokenizer)."""
        k = self.top_ids.shape[2]
        index = {name: np.repeat(values, k) for name, values in self._index().items()}
        n = len(index["layer"])
        tokens = self.top_tokens.reshape(-1) if self.top_tokens is not None else [None] * n
        return pd.DataFrame(
            {
                **index,
                "rank": np.tile(np.arange(k), n // k if k else 0),
                "token_id": self.top_ids.reshape(-1),
                "token": tokens,
                "prob": self.top_probs.reshape(-1),
            }
        )

    def token_frame(self) -> pd.DataFrame:
        """Log-probabilities of the tracked `tokens`, one row per (layer, position, token):
        ``sequence, position, role, layer, token_id, logprob``.

        Raises:
            ValueError: when no `tokens` were tracked.
        """
        if self.tokens is None or self.token_logprobs is None:
            raise ValueError("no tokens were tracked; pass tokens=[ids] to logit_lens")
        t = len(self.tokens)
        index = {name: np.repeat(values, t) for name, values in self._index().items()}
        n = len(index["layer"])
        return pd.DataFrame(
            {
                **index,
                "token_id": np.tile(np.asarray(self.tokens), n // t if t else 0),
                "logprob": self.token_logprobs.reshape(-1),
            }
        )

    def summary(self, token_set: Iterable[int] | None = None) -> pd.DataFrame:
        """Per layer, over all selected positions: ``n_positions``, ``mean_max_prob``,
        ``mean_entropy``, the most common top-1 token (``top1_mode``, and ``top1_mode_fraction``
        of positions predicting it) and, given `token_set`, ``top1_in_set``: the fraction of
        positions whose top-1 token is in the set (e.g. class-name tokens, Neo et al.).
        """
        wanted = None if token_set is None else np.asarray(sorted(set(token_set)))
        records = []
        for i, layer in enumerate(self.layers):
            top1 = self.top_ids[i, :, 0]
            mode, count = Counter(top1.tolist()).most_common(1)[0] if len(top1) else (-1, 0)
            record: dict[str, Any] = {
                "layer": layer,
                "n_positions": len(top1),
                "mean_max_prob": float(self.top_probs[i, :, 0].mean()),
                "mean_entropy": float(self.entropy[i].mean()),
                "top1_mode": mode,
                "top1_mode_fraction": count / max(len(top1), 1),
            }
            if wanted is not None:
                record["top1_in_set"] = float(np.isin(top1, wanted).mean())
            records.append(record)
        return pd.DataFrame.from_records(records)


def logit_lens(
    model: HookedVLM,
    batch: Batch,
    *,
    positions: PositionSpec = "gate",
    layers: Iterable[int] | None = None,
    top_k: int = 5,
    tokens: Sequence[int] | None = None,
) -> LogitLensResult:
    """Decode ``resid_post`` of each layer at the selected positions with the model's own head.

    Args:
        model: the `HookedVLM`.
        batch: a `Batch`.
        positions: any `PositionSpec` (``"gate"``, ``"image"``, ``"last"``,
            ``image_token(31)``...).
        layers: layers to read (default: all).
        top_k: number of top tokens kept per position (capped at the vocabulary size).
        tokens: token ids whose log-probabilities are tracked at every position and layer.

    Returns:
        A `LogitLensResult`.

    Raises:
        ValueError: when `positions` selects nothing, or for bad layers, `top_k` or `tokens`.

    Example:
        >>> from vlm_lens import HookedVLM
        >>> from vlm_lens.analysis.logit_lens import logit_lens
        >>> from vlm_lens.testing import build_tiny, sample_image
        >>> tiny = build_tiny("chameleon")
        >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
        >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
        >>> lens = logit_lens(model, batch, positions="gate", top_k=3)
        >>> lens.top_ids.shape, lens.role
        ((2, 1, 3), ('gate',))
        >>> logit_lens(model, batch, positions="image").summary().columns.tolist()[:3]
        ['layer', 'n_positions', 'mean_max_prob']
    """
    layer_ids = resolve_layers(model, layers)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    mask = select(positions, batch.layout)
    if not bool(mask.any()):
        raise ValueError(f"positions={describe(positions)} selects no position of this batch")
    seq_idx, pos_idx = mask.nonzero(as_tuple=True)
    store: dict[int, Tensor] = {}
    fwd_hooks = [
        (hooks.resid_post(layer), _gather_fn(layer, seq_idx, pos_idx, store)) for layer in layer_ids
    ]
    run(model, batch, fwd_hooks, layer_ids)
    d_vocab = None
    track = None if tokens is None else [int(t) for t in tokens]
    top_ids, top_probs, entropy, logprobs = [], [], [], []
    with torch.no_grad():
        for layer in layer_ids:
            logits = model.resid_to_logits(store.pop(layer)).float()
            d_vocab = logits.shape[-1]
            if track is not None and any(not 0 <= t < d_vocab for t in track):
                raise ValueError(f"tokens must be ids in [0, {d_vocab}), got {track}")
            probs = torch.softmax(logits, dim=-1)
            top = probs.topk(min(top_k, d_vocab), dim=-1)
            top_ids.append(top.indices.cpu())
            top_probs.append(top.values.cpu())
            entropy.append(torch.special.entr(probs).sum(-1).cpu())
            if track is not None:
                logprobs.append(torch.log_softmax(logits, dim=-1)[:, track].cpu())
    ids = torch.stack(top_ids).numpy()
    provenance = Provenance(
        "logit_lens", model, positions=positions, layers=layer_ids, top_k=top_k, tokens=track
    )
    provenance.add(batch)
    roles = [batch.layout.primary_roles(b) for b in range(len(batch))]
    return LogitLensResult(
        layers=layer_ids,
        sequence=seq_idx.numpy(),
        position=pos_idx.numpy(),
        role=tuple(roles[b][p] for b, p in zip(seq_idx.tolist(), pos_idx.tolist(), strict=True)),
        top_ids=ids,
        top_probs=torch.stack(top_probs).numpy(),
        top_tokens=_decode(model, ids),
        entropy=torch.stack(entropy).numpy(),
        tokens=None if track is None else tuple(track),
        token_logprobs=None if track is None else torch.stack(logprobs).numpy(),
        meta=provenance.meta(),
    )


def _gather_fn(
    layer: int, seq_idx: Tensor, pos_idx: Tensor, store: dict[int, Tensor]
) -> Callable[..., None]:
    def hook_fn(resid: Float[Tensor, "batch pos d_model"], hook: Any) -> None:  # noqa: ARG001
        device = resid.device
        store[layer] = resid[seq_idx.to(device), pos_idx.to(device)].detach()

    return hook_fn


def _decode(model: HookedVLM, ids: np.ndarray) -> np.ndarray | None:
    tokenizer = model.tokenizer
    if tokenizer is None:
        return None
    unique = np.unique(ids)
    text = {int(t): tokenizer.decode([int(t)]) for t in unique}
    return np.vectorize(text.__getitem__, otypes=[object])(ids)

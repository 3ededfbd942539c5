"""Attention knockout: block attention edges from query positions to key positions.

Two modes, because papers differ:

* ``mode="mask"`` (Geva et al. 2023): the blocked scores are set to the dtype's minimum before
  the softmax, so each row renormalises over the keys it may still read. Hook:
  ``blocks.{l}.attn.hook_attn_scores``, marked mask-only (`vlm_lens.engine.score_mask`): under SDPA
  the layer stays on the fused kernel with the blocked edges taken out of its mask; under eager
  attention, or when another hook reads that layer's scores or pattern, it edits the scores.
* ``mode="zero"`` (the Narrow Gate paper's code): the blocked weights are set to zero after the
  softmax and rows are *not* renormalised (they sum to less than one). Hook:
  ``blocks.{l}.attn.hook_pattern``.

Which edges exist follows the batch's `AttentionStructure` (``batch.attention``, from the
family adapter): causal, plus any bidirectional blocks. A query *before* a knocked-out key in
the same block reads it, so the earliest affected position can lie before the key, and a change
inside a block reaches back to the block's start in the next layer.

Query and key positions are `PositionSpec` values (roles, positions, masks or callables; see
`vlm_lens.positions`), resolved per sequence on the batch's layout, so prompts of any length and
padding work. The hooks also work inside `HookedVLM.generate`: with the KV cache each step has a
single query, a generated token, which counts as ``text`` (and ``"all"``).

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("chameleon")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    >>> ko = gate_knockout(batch, layers=range(model.cfg.n_layers))
    >>> logits = model.run_with_hooks(batch, fwd_hooks=ko)
    >>> ko.earliest == int(batch.layout.positions("gate")[0])
    True
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vlm_lens import hooks as hook_names
from vlm_lens.attention_structure import AttentionStructure
from vlm_lens.batch import Batch, attention_of, layout_of
from vlm_lens.engine.intervention import Intervention, first_true
from vlm_lens.engine.score_mask import mask_only
from vlm_lens.errors import VLMInputError
from vlm_lens.layout import TokenLayout
from vlm_lens.positions import (
    ALL,
    PositionSpec,
    after,
    covers_generated,
    random_image_tokens,
    select,
)

KnockoutMode = Literal["mask", "zero"]
IMAGE_SIDE_KEYS: tuple[str, ...] = ("image_start", "image", "image_row_end")
"""Keys of the paper's image-to-text condition: BOI (and header) and every image token; the gate
and closing specials are excluded."""


def knockout(
    batch: Batch | TokenLayout,
    *,
    queries: PositionSpec,
    keys: PositionSpec,
    layers: int | Iterable[int] | None = None,
    heads: int | Sequence[int] | None = None,
    mode: KnockoutMode = "mask",
) -> Intervention:
    """Block attention from `queries` to `keys` in `layers` (and `heads`).

    Args:
        batch: the batch the hooks will run on (or its layout).
        queries: positions whose attention is cut (a query also covers generated tokens when the
            spec covers text, see `vlm_lens.positions`).
        keys: positions that may no longer be read.
        layers: a layer, several, or ``None`` for every layer.
        heads: a head, several, or ``None`` for all.
        mode: ``"mask"`` (pre-softmax, rows renormalise) or ``"zero"`` (post-softmax, no
            renormalisation).

    Returns:
        An `Intervention` (a ``fwd_hooks`` list) whose ``earliest_position`` is the first query
        with a blocked edge, moved back to the start of its bidirectional block (and of any
        block a change there reaches) when the batch's `AttentionStructure` has blocks.

    Raises:
        ValueError: for an unknown mode, or in ``"mask"`` mode when some query would have every
            key blocked (its softmax would be undefined; use ``mode="zero"``).

    Example:
        >>> ko = knockout(batch, queries=after("text", "gate"), keys="image", layers=[0, 1])
        ... # doctest: +SKIP
    """
    if mode not in ("mask", "zero"):
        raise ValueError(
            f"mode must be 'mask' (pre-softmax) or 'zero' (post-softmax), got {mode!r}"
        )
    layout = layout_of(batch)
    edges = _edge_set(layout, queries, keys, attention_of(batch))
    if mode == "mask":
        edges.check_rows_keep_a_key()
    head_index = _as_list(heads)
    hook_fn = _mask_scores if mode == "mask" else _zero_pattern

    def blocked(shape: tuple[int, ...], name: str, device: Any) -> Tensor:
        batch_size, n_heads, q_len, k_len = shape
        edge = edges.for_shape(batch_size, q_len, k_len, name).to(device)[:, None]
        if head_index is not None:
            wrong = [h for h in head_index if not -n_heads <= h < n_heads]
            if wrong:
                raise VLMInputError(
                    f"{name}: knockout heads {wrong} do not exist; this layer has {n_heads} "
                    f"heads (0..{n_heads - 1})"
                )
            per_head = torch.zeros(n_heads, dtype=torch.bool, device=device)
            per_head[head_index] = True
            edge = edge & per_head[None, :, None, None]
        return edge

    def knock(tensor: Float[Tensor, "batch head q k"], hook: Any) -> Tensor:
        return hook_fn(tensor, blocked(tuple(tensor.shape), hook.name, tensor.device))

    if mode == "mask":  # under SDPA the layer stays fused, the edges leave its mask
        mask_only(knock, blocked)

    site = hook_names.attn_scores if mode == "mask" else hook_names.pattern
    names: list[Any]
    if layers is None:
        suffix = site(0).split(".", 2)[2]
        names = [lambda name: name.startswith("blocks.") and name.endswith(suffix)]
    else:
        names = [site(layer) for layer in _as_list(layers) or []]
    return Intervention([(name, knock) for name in names], edges.earliest_position())


def gate_knockout(
    batch: Batch | TokenLayout,
    *,
    layers: int | Iterable[int] | None = None,
    heads: int | Sequence[int] | None = None,
    mode: KnockoutMode = "mask",
) -> Intervention:
    """The paper's [EOI] condition: no position reads the gate (its own self-attention and
    every later token, generated ones included).

    Example:
        >>> ko = gate_knockout(batch, layers=last_layers(32, 8))  # doctest: +SKIP
    """
    return knockout(batch, queries=ALL, keys="gate", layers=layers, heads=heads, mode=mode)


def image_to_text_knockout(
    batch: Batch | TokenLayout,
    *,
    layers: int | Iterable[int] | None = None,
    heads: int | Sequence[int] | None = None,
    mode: KnockoutMode = "mask",
) -> Intervention:
    """The paper's img→text condition: text after the image cannot read BOI or any image token
    (the gate stays readable, so information can still pass through it).

    Example:
        >>> ko = image_to_text_knockout(batch)  # doctest: +SKIP
    """
    return knockout(
        batch,
        queries=after("text", "image"),
        keys=list(IMAGE_SIDE_KEYS),
        layers=layers,
        heads=heads,
        mode=mode,
    )


def random_image_knockout(
    batch: Batch | TokenLayout,
    *,
    k: int = 10,
    seed: int | Sequence[int] = 0,
    layers: int | Iterable[int] | None = None,
    heads: int | Sequence[int] | None = None,
    mode: KnockoutMode = "mask",
) -> Intervention:
    """The paper's control: no position reads `k` random image tokens of each image.

    In ``mode="mask"``, a prompt that opens with drawn image tokens (no BOS before the image:
    Qwen2-based LLaVA-OneVision) leaves those first positions no key to read; they stay out of
    the queries (each still reads itself), every other position is a query.

    Example:
        >>> ko = random_image_knockout(batch, k=10, seed=3)  # doctest: +SKIP
    """
    keys = random_image_tokens(k, seed)

    def queries(layout: TokenLayout) -> Bool[Tensor, "batch pos"]:
        real, drawn = select(ALL, layout), select(keys, layout)
        if mode != "mask":
            return real
        opening = torch.cumprod((drawn | ~real).int(), dim=1).bool() & real  # leading drawn run
        return real & ~opening

    return knockout(batch, queries=queries, keys=keys, layers=layers, heads=heads, mode=mode)


def last_layers(n_layers: int, window: int) -> range:
    """The last `window` layers of an `n_layers` model (the paper's progressive knockout).

    Example:
        >>> last_layers(32, 8)
        range(24, 32)
    """
    if not 0 <= window <= n_layers:
        raise ValueError(f"window must be in [0, {n_layers}], got {window}")
    return range(n_layers - window, n_layers)


# ---------------------------------------------------------------------- internals
_EDGE_SETS: dict[int, dict[tuple[Any, ...], Any]] = {}
"""Per live layout (by id; dropped with the layout): its edge sets by the positions they block,
and under ``("visible",)`` its attention structure's ``[batch, pos, pos]`` visibility. A sweep
builds one knockout per layer window on one batch, and a Table 1 batch one per condition; they
share these masks instead of rebuilding them."""


def _edge_set(
    layout: TokenLayout, queries: PositionSpec, keys: PositionSpec, attention: AttentionStructure
) -> _EdgeSet:
    """The `_EdgeSet` of these positions on `layout` under `attention`, shared by every knockout
    that selects the same query and key positions (compared by value, so two closures of
    ``after("text", "gate")`` share one)."""
    q, k = select(queries, layout), select(keys, layout)
    q_gen, k_gen = covers_generated(queries, layout), covers_generated(keys, layout)
    key = tuple(_bytes(t) for t in (q, k, q_gen, k_gen))
    per_layout = _EDGE_SETS.get(id(layout))
    if per_layout is None:
        per_layout = _EDGE_SETS[id(layout)] = {}
        weakref.finalize(layout, _EDGE_SETS.pop, id(layout), None)
    found = per_layout.get(key)
    if found is None or found.attention is not attention:
        found = per_layout[key] = _EdgeSet(layout, q, k, q_gen, k_gen, attention, per_layout)
    return found


def _bytes(mask: Tensor) -> tuple[tuple[int, ...], bytes]:
    return tuple(mask.shape), mask.to("cpu", torch.bool).numpy().tobytes()


class _EdgeSet:
    """Blocked edges of a batch, resolved once per (query length, key length)."""

    def __init__(
        self,
        layout: TokenLayout,
        queries: Bool[Tensor, "batch pos"],
        keys: Bool[Tensor, "batch pos"],
        query_generated: Bool[Tensor, " batch"],
        key_generated: Bool[Tensor, " batch"],
        attention: AttentionStructure,
        shared: dict[tuple[Any, ...], Any] | None = None,
    ):
        if attention.shape != layout.shape:
            raise VLMInputError(
                f"the batch's attention structure has shape {attention.shape} but its layout "
                f"{layout.shape}; rebuild the batch with model.prepare"
            )
        # weakly: the shared cache (`_EDGE_SETS`) must not keep the layout it is keyed by alive
        self._layout = weakref.ref(layout)
        self.shape: tuple[int, int] = tuple(layout.shape)  # type: ignore[assignment]
        self.attention = attention
        self.queries = queries
        self.keys = keys
        self.query_generated = query_generated
        self.key_generated = key_generated
        self._cache: dict[tuple[int, int], Tensor] = {}
        self._shared: dict[tuple[Any, ...], Any] = {} if shared is None else shared
        self._earliest: Tensor | None = None
        self._keeps_a_key = False

    @property
    def vlm_lens_fingerprint(self) -> str:
        """What a dataset run's hook fingerprint reads (`vlm_lens.data.hook_state`): the
        blocked positions and the attention structure, not the caches (which depend on what
        ran before, and on which other knockouts share the batch)."""
        digest = hashlib.sha256()
        masks = (self.queries, self.keys, self.query_generated, self.key_generated)
        for tensor in (*masks, self.attention.block_ids):
            digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
        return f"knockout edges {digest.hexdigest()}"

    def visible(self) -> Bool[Tensor, "batch q k"]:
        """The structure's ``[batch, pos, pos]`` visibility, shared by the layout's edge sets."""
        held = self._shared.get(("visible",))
        if held is None or held[0] is not self.attention:
            held = (self.attention, self.attention.mask().to(self.queries.device))
            self._shared[("visible",)] = held
        return held[1]

    def prompt_edges(self) -> Bool[Tensor, "batch q k"]:
        return self.queries[:, :, None] & self.keys[:, None, :] & self.visible()

    def earliest_position(self) -> Tensor:
        if self._earliest is None:
            first = first_true(self.prompt_edges().any(dim=2).cpu(), self.shape[1])
            self._earliest = self.attention.earliest_affected(first)
        return self._earliest.clone()

    def check_rows_keep_a_key(self) -> None:
        if self._keeps_a_key:
            return
        layout = self._layout()
        if layout is None:  # pragma: no cover - knockout() holds the layout while it checks
            raise RuntimeError("the knockout's layout is gone")
        real = ~layout.mask("pad")
        visible = real[:, None, :] & self.visible()
        left = visible & ~self.prompt_edges()
        dead = (visible.any(dim=2) & ~left.any(dim=2)) & real
        if dead.any():
            b, p = (int(x) for x in dead.nonzero()[0])
            raise ValueError(
                f"knockout would block every key of query position {p} in sequence {b} "
                f"(roles {layout.roles_at(b, p)}); its attention row would be undefined in "
                "mode='mask'. Exclude it from the queries or use mode='zero'."
            )
        self._keeps_a_key = True

    def for_shape(self, batch: int, q_len: int, k_len: int, name: str) -> Tensor:
        prompt_batch, length = self.shape
        if batch != prompt_batch or k_len < length:
            raise VLMInputError(
                f"{name}: knockout was built for a batch of shape {self.shape} but the "
                f"model ran {batch} sequences with {k_len} key positions; build the knockout "
                "from the batch you run (beam search and num_return_sequences are not supported)"
            )
        key = (q_len, k_len)
        if key not in self._cache:
            self._cache[key] = self._edges(q_len, k_len)
        return self._cache[key]

    def _edges(self, q_len: int, k_len: int) -> Tensor:
        extra = k_len - self.shape[1]
        generated_q = self.query_generated[:, None].expand(-1, extra)
        generated_k = self.key_generated[:, None].expand(-1, extra)
        q_all = torch.cat([self.queries, generated_q], dim=1)[:, k_len - q_len :]
        k_all = torch.cat([self.keys, generated_k], dim=1)
        return q_all[:, :, None] & k_all[:, None, :]


def _mask_scores(scores: Tensor, blocked: Tensor) -> Tensor:
    return scores.masked_fill(blocked, torch.finfo(scores.dtype).min)


def _zero_pattern(pattern: Tensor, blocked: Tensor) -> Tensor:
    return pattern.masked_fill(blocked, 0.0)


def _as_list(value: int | Iterable[int] | None) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]

"""Several runs in one call: their hooks stacked along the batch.

A run is a ``fwd_hooks`` list built for one batch of ``rows`` sequences (a knockout condition,
one random draw). `stack_hooks` composes ``n`` of them into one hook list for the batch repeated
``n`` times (`tile_batch`; run ``r`` owns rows ``r * rows .. (r + 1) * rows - 1``): each hook
sees only its run's rows, exactly the ``[rows, ...]`` tensors it would see in a pass of its
own, and a mask-only knockout stays mask-only on its rows (`vlm_lens.engine.score_mask`).
`tile_prefix` repeats a clean `PrefixCache` the same way, so runs that share the clean prefix
generate together from one prefix pass. So ``n`` runs cost one prompt pass (or one suffix pass)
and one decoding loop over ``n * rows`` rows instead of ``n`` of each, which is what makes a
table of conditions cheap when a decoding step is bound by per-call overhead (small models,
GPUs).

Exactness: every row computes what its own run computes, up to float rounding, because a
layer runs one attention path for all rows of a call: when any run of the call reads or edits a
layer's scores or pattern (a ``mode="zero"`` knockout), that layer runs TransformerLens' eager
reconstruction for every row, the others' included; and a kernel's blocking can depend on the
batch size. Greedy tokens are compared with the per-run ones in ``tests/test_eval_stack.py``.

Only `Intervention` lists whose hooks all sit on decoder points with a batch dimension stack
(`stackable`); any other hook list runs in a call of its own.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.interventions import gate_knockout, image_to_text_knockout
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("chameleon")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    >>> runs = [gate_knockout(batch), image_to_text_knockout(batch)]
    >>> both = model.run_with_hooks(tile_batch(batch, 2), fwd_hooks=stack_hooks(runs, len(batch)))
    >>> alone = model.run_with_hooks(batch, fwd_hooks=runs[1])
    >>> bool(torch.allclose(both[1:], alone, atol=1e-5))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from vlm_lens import hooks as hook_names
from vlm_lens.batch import Batch
from vlm_lens.engine.intervention import Intervention
from vlm_lens.engine.memory import (
    available_memory,
    forward_bytes_per_sequence,
    model_devices,
)
from vlm_lens.engine.prefix import PrefixCache
from vlm_lens.engine.suffix_stack import _along_batch, _repeat, _rows_hook
from vlm_lens.errors import VLMInputError
from vlm_lens.types import HookList

__all__ = ["MAX_ROWS", "rows_per_call", "stack_hooks", "stackable", "tile_batch", "tile_prefix"]

MAX_ROWS = 256
"""Default cap on the rows of one stacked call (`rows_per_call`)."""

CPU_SCORES_BYTES = 32 * 2**20
"""On CPU, the most bytes of one layer's ``[rows, heads, q, k]`` fp32 scores a stacked call
may hold (`rows_per_call`): past the caches, an eager layer's softmax, zeroing and copies are
bound by memory bandwidth, and one call of 80 whole prompts (5 random draws of 16 at 266
positions, 90 MB a layer) measured 1.5x slower than five calls of 16."""

_NO_BATCH_AXIS = ("hook_cos", "hook_sin")  # rotary tables: [1, pos, d], shared by the rows
_FIX = "run that hook list in a call of its own (evaluate(..., stack_runs=False))"


def stackable(hooks: HookList, names: Sequence[str]) -> bool:
    """Whether a run's hooks can share a call with other runs: an `Intervention` (which
    knows the positions it can change) whose hooks all sit on decoder points whose tensors
    have the batch first (``blocks.{l}.…`` but the rotary tables, ``ln_final``, ``unembed``).
    Filters are matched against `names` (the model's hook names).

    Example:
        >>> stackable(Intervention([("blocks.0.attn.hook_pattern", print)], torch.tensor([3])), [])
        True
        >>> stackable([("blocks.0.attn.hook_pattern", print)], [])  # not an Intervention
        False
    """
    if not isinstance(hooks, Intervention):
        return False
    for name_or_filter, _ in hooks:
        matched = (
            [name_or_filter]
            if isinstance(name_or_filter, str)
            else [n for n in names if name_or_filter(n)]
        )
        for name in matched:
            decoder = name.startswith(("blocks.", "ln_final.", "unembed.", hook_names.FINAL_NORM))
            if not decoder or name.endswith(_NO_BATCH_AXIS):
                return False
    return True


def stack_hooks(runs: Sequence[HookList], rows: int) -> list[Any]:
    """One hook list for `runs` stacked along the batch: run ``r``'s hooks see rows
    ``r * rows .. (r + 1) * rows - 1`` only (a hook on a tensor whose first dimension is not
    the stacked batch raises `VLMInputError`).

    Args:
        runs: one ``fwd_hooks`` list per run, each built for a batch of `rows` sequences.
        rows: sequences per run.

    Returns:
        A ``fwd_hooks`` list for a batch of ``len(runs) * rows`` sequences (`tile_batch`).

    Example:
        >>> hooks = stack_hooks([gate_knockout(batch), []], len(batch))  # doctest: +SKIP
    """
    if rows < 1:
        raise VLMInputError(f"rows must be at least 1, got {rows}")
    total = len(runs) * rows
    owned: dict[tuple[int, int], Any] = {}
    return [
        (name, _rows_hook(fn, slice(r * rows, (r + 1) * rows), total, owned, _FIX))
        for r, run in enumerate(runs)
        for name, fn in run
    ]


def tile_batch(batch: Batch, copies: int) -> Batch:
    """`batch` repeated `copies` times along the batch (copy ``c`` is rows
    ``c * len(batch) ..``): every tensor input along its first axis (sequences, images and
    image patches all come in the order of the sequences), lists repeated, the layout, the
    attention structure and the texts likewise.

    Example:
        >>> len(tile_batch(batch, 3)) == 3 * len(batch)  # doctest: +SKIP
        True
    """
    if copies < 1:
        raise VLMInputError(f"copies must be at least 1, got {copies}")
    if copies == 1:
        return batch
    inputs: dict[str, Any] = {}
    for key, value in batch.inputs.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            inputs[key] = _along_batch(value, copies)
        elif isinstance(value, (list, tuple)):
            inputs[key] = type(value)(list(value) * copies)
        else:
            inputs[key] = value
    order = list(range(len(batch))) * copies
    return replace(
        batch,
        inputs=inputs,
        layout=batch.layout.select(order),
        images_per_sequence=tuple(batch.images_per_sequence) * copies,
        texts=None if batch.texts is None else tuple(batch.texts) * copies,
        attention=None if batch.attention is None else batch.attention.select(order),
    )


def tile_prefix(prefix: PrefixCache, batch: Batch, copies: int) -> PrefixCache:
    """The clean prefix of `prefix` for `batch`, its batch tiled `copies` times
    (`tile_batch`): keys and values repeated along the batch in a new ``DynamicCache`` (the
    prefix is not written), position ids along their batch axis.

    Raises:
        VLMInputError: if `batch` is not the prefix's batch tiled `copies` times, or the cache
            has layers other than full-attention ``DynamicLayer``.
    """
    rows = len(prefix.batch)
    if len(batch) != rows * copies or not torch.equal(
        batch.input_ids, _along_batch(prefix.batch.input_ids, copies)
    ):
        raise VLMInputError(
            f"the batch ({len(batch)} rows) is not the prefix's batch ({rows} rows) tiled "
            f"{copies} times; build it with tile_batch(prefix.batch, {copies})"
        )
    cache = DynamicCache()
    for index, layer in enumerate(prefix.past_key_values.layers):
        if type(layer) is not DynamicLayer or layer.keys is None or layer.values is None:
            raise VLMInputError(
                f"layer {index} of the prefix cache is a {type(layer).__name__}; only filled "
                "full-attention caches can be tiled, run each condition in a call of its own"
            )
        cache.update(_along_batch(layer.keys, copies), _along_batch(layer.values, copies), index)
    positions = prefix.position_ids
    if positions is not None:
        positions = _repeat("position_ids", positions, copies, rows)
    return PrefixCache(batch, prefix.upto, cache, positions)


def rows_per_call(
    model: Any,
    length: int,
    *,
    new_tokens: int = 0,
    queries: int | None = None,
    fraction: float = 0.25,
    maximum: int = MAX_ROWS,
) -> int:
    """How many rows of `length` prompt positions one stacked call can hold in `fraction` of
    the free memory: a forward's activations (`forward_bytes_per_sequence`), one layer's
    scores and pattern run eager (a zero-mode knockout), and the KV cache of every layer for
    the prompt and `new_tokens` generated ones (at least 1, at most `maximum`). On CPU also
    at most `CPU_SCORES_BYTES` of one layer's scores for `queries` query positions (default
    `length`: a whole-prompt pass; a pass from a shared prefix has fewer).

    Example:
        >>> 1 <= rows_per_call(model, 300, new_tokens=20) <= MAX_ROWS  # doctest: +SKIP
        True
    """
    cfg = model.cfg
    size = torch.finfo(model.dtype).bits // 8
    total = length + new_tokens
    kv_heads = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    kv = 2 * int(cfg.n_layers) * kv_heads * int(cfg.d_head) * total * size
    scores = 3 * int(cfg.n_heads) * length * total * 4  # fp32 softmax of an eager layer
    per_row = kv + scores + forward_bytes_per_sequence(model, length)
    budget = min(available_memory(d) for d in model_devices(model)) * fraction
    rows = int(budget // per_row)
    if torch.device(model.device).type == "cpu":
        q = length if queries is None else queries
        rows = min(rows, CPU_SCORES_BYTES // max(1, int(cfg.n_heads) * q * length * 4))
    return max(1, min(maximum, rows))

"""Several conditions in one suffix pass: stacked along the batch, from the first layer they touch.

A sweep's conditions all run the same suffix positions on the same clean prefix
(`vlm_lens.engine.prefix`). `run_suffixes` runs them ``k`` at a time: the batch is repeated ``k``
times (condition ``c`` owns rows ``c * batch .. (c + 1) * batch - 1``), the prefix keys and
values are repeated to match, and each condition's hooks see only their own rows, exactly the
``[batch, ...]`` tensors they would see in a pass of their own. Decoder layers below the first
layer any condition of the group hooks compute nothing the clean run did not, so the group
starts there: its input is the clean residual stream entering that layer (recorded once by the
clean run, which rides in the first pass as one more condition) and the layers below it do not
run. A sweep over every layer of a 32-layer model then computes about half the layers per
condition, in a few wide passes instead of 33 thin ones, which is what makes it cost a few full
forwards rather than one per condition.

Exactness: with eager attention the logits are bit-identical to one `HookedVLM.run_suffix` per
condition (and to the naive full runs); with SDPA they agree to float rounding (the fused
kernel tiles by batch and query length, and a group runs a layer eager when any of its
conditions reads or edits that layer's scores or pattern; mask-mode knockouts do not count,
`vlm_lens.engine.score_mask`), the clean run's included.

The first layer of a condition is read off its hook names (``blocks.{l}.…`` is layer ``l``;
``ln_final``/``unembed`` hooks come after every layer; any other hook, and a filter that matches
one, counts as layer 0, where nothing is skipped).

Example:
    >>> from vlm_lens import HookedVLM, hooks
    >>> from vlm_lens.interventions import gate_knockout
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("chameleon")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    >>> ko = [gate_knockout(batch, layers=[layer]) for layer in range(model.cfg.n_layers)]
    >>> prefix = model.prefix_cache(batch, upto=ko[0].earliest)
    >>> runs = run_suffixes(model, prefix, ko)
    >>> len(runs.logits), runs.logits[1].shape == runs.clean.shape, runs.first_layers
    (2, True, (0, 1))
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers.cache_utils import Cache, DynamicLayer

from vlm_lens import hooks as hook_names
from vlm_lens.engine.memory import (
    available_memory,
    forward_bytes_per_sequence,
    model_devices,
)
from vlm_lens.engine.prefix import PrefixCache, suffix_inputs
from vlm_lens.engine.query_block import query_block
from vlm_lens.engine.score_mask import blocked_edges, mask_only
from vlm_lens.errors import VLMInputError
from vlm_lens.types import HookList

MAX_CONDITIONS_PER_PASS = 16
"""Default cap on conditions per stacked pass (wider passes gained nothing measurable on CPU)."""


@dataclass(frozen=True)
class SuffixRuns:
    """Logits of the clean suffix pass and of every condition.

    Attributes:
        clean: ``[batch, suffix, d_vocab]`` logits of the clean suffix pass (or their readout).
        logits: one ``[batch, suffix, d_vocab]`` tensor (or readout) per condition, in the order
            given.
        first_layers: the first decoder layer each condition's hooks touch (its pass starts
            there; ``n_layers`` for hooks only on the final norm or unembedding); all 0 when
            layers are not skipped (``skip_clean_layers=False``, or a decoder whose layers
            differ in attention type, `layers_can_be_skipped`).
        passes: number of passes run (the clean run is one more condition of the first).

    Example:
        >>> runs.logits[0].shape == runs.clean.shape  # doctest: +SKIP
        True
    """

    clean: Tensor
    logits: list[Tensor]
    first_layers: tuple[int, ...]
    passes: int


def first_layer(hooks: HookList, names: Sequence[str], n_layers: int) -> int:
    """The first decoder layer a hook list can change: the smallest ``l`` of its
    ``blocks.{l}.`` names (filters are matched against `names`), ``n_layers`` for final norm
    and unembedding hooks, and 0 for any other hook (embeddings, image features).

    Example:
        >>> first_layer([("blocks.3.hook_resid_pre", print), ("ln_final.hook_out", print)], [], 4)
        3
        >>> pattern = lambda name: name.endswith("hook_pattern")
        >>> first_layer([(pattern, print)], ["blocks.1.attn.hook_pattern"], 4)
        1
    """
    layers = [n_layers]
    for name_or_filter, _ in hooks:
        matched = (
            [name_or_filter]
            if isinstance(name_or_filter, str)
            else [n for n in names if name_or_filter(n)]
        )
        layers.extend(_layer_of(name, n_layers) for name in matched)
    return min(layers)


def _layer_of(name: str, n_layers: int) -> int:
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit():
        return int(parts[1])
    if name.startswith(("ln_final.", "unembed.", hook_names.FINAL_NORM)):
        return n_layers
    return 0


def conditions_per_pass(
    model: Any,
    prefix: PrefixCache,
    *,
    fraction: float = 0.25,
    maximum: int = MAX_CONDITIONS_PER_PASS,
) -> int:
    """How many conditions one stacked pass can hold in `fraction` of the free memory: each
    needs the suffix activations, its rows of the key/value buffers (one layer's worth: the
    layers of a pass share them, `_StackedLayer`) and of an eager layer's scores.

    Example:
        >>> 1 <= conditions_per_pass(model, prefix) <= 16  # doctest: +SKIP
        True
    """
    rows = len(prefix.batch)
    cfg = model.cfg
    size = torch.finfo(model.dtype).bits // 8
    kv_heads = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    total = prefix.upto + prefix.suffix_length
    kv = 2 * kv_heads * int(cfg.d_head) * total * size
    scores = 3 * int(cfg.n_heads) * prefix.suffix_length * total * size  # a layer run eager
    per_condition = rows * (kv + scores + forward_bytes_per_sequence(model, prefix.suffix_length))
    budget = min(available_memory(d) for d in model_devices(model)) * fraction
    return max(1, min(maximum, int(budget // per_condition)))


def pass_cost(device: torch.device | str) -> float:
    """What one more stacked pass costs per layer, in conditions' worth of suffix compute:
    2 on CPU (measured at hidden 256: about 2.5, see ``benchmarks/README.md``), 8 elsewhere
    (a guess: on a GPU reading a layer's weights dominates a short suffix)."""
    return 2.0 if torch.device(device).type == "cpu" else 8.0


def plan_passes(
    starts: Sequence[int], n_layers: int, width: int, cost: float
) -> list[tuple[int, int]]:
    """Split conditions sorted by first layer into passes of at most `width`, cheapest first.

    A pass ``[a, b)`` runs layers ``starts[a] ..`` for ``b - a`` conditions and costs
    ``(n_layers - starts[a]) * (cost + b - a)``: wide passes share the fixed cost of a pass,
    but every condition computes the layers from the pass's first one. Dynamic programming
    over the split points gives the cheapest split.

    Args:
        starts: first layer of each condition, in ascending order.
        n_layers: number of decoder layers.
        width: the most conditions in one pass.
        cost: a pass's fixed cost per layer (`pass_cost`).

    Returns:
        ``(a, b)`` index ranges into `starts`, in order.

    Example:
        >>> plan_passes([0, 1, 2, 30, 31], 32, width=8, cost=2.0)
        [(0, 3), (3, 5)]
    """
    if list(starts) != sorted(starts):
        raise ValueError("starts must be sorted")
    n = len(starts)
    best = [0.0] + [float("inf")] * n
    split = [0] * (n + 1)
    for b in range(1, n + 1):
        for a in range(max(0, b - width), b):
            total = best[a] + (n_layers - starts[a]) * (cost + b - a)
            if total < best[b]:
                best[b], split[b] = total, a
    passes, b = [], n
    while b > 0:
        passes.append((split[b], b))
        b = split[b]
    return passes[::-1]


def run_suffixes(
    model: Any,
    prefix: PrefixCache,
    conditions: Sequence[HookList],
    *,
    per_pass: int | Literal["auto"] = "auto",
    skip_clean_layers: bool = True,
    readout: Callable[[Tensor], Tensor] | None = None,
) -> SuffixRuns:
    """Run the clean suffix and every condition's suffix on `prefix`, several per pass.

    Args:
        model: the `HookedVLM`.
        prefix: from `HookedVLM.prefix_cache`; every condition must leave its positions alone
            (an `Intervention` with ``earliest >= prefix.upto``).
        conditions: one ``fwd_hooks`` list per condition. Each hook sees only its condition's
            rows; a hook on a tensor without a batch dimension (rotary ``hook_cos``) raises.
            Hooks already active around the call (``with model.hooks(...)``) fire on the whole
            stacked batch.
        per_pass: the most conditions in one stacked pass (``"auto"``: from free memory, at
            most `MAX_CONDITIONS_PER_PASS`; 1 runs one condition per pass). Conditions are
            grouped by first layer into passes by `plan_passes`.
        skip_clean_layers: start each group at the first layer its hooks touch, from the clean
            residual stream (``False`` runs every layer).
        readout: applied to each run's ``[batch, suffix, d_vocab]`` logits as soon as its pass
            ends, so only what it returns is kept (e.g. the last token's logits); default:
            keep the logits.

    Returns:
        A `SuffixRuns`.

    Raises:
        VLMInputError: for ``per_pass < 1``, or a hook on a tensor whose first dimension is not
            the stacked batch.
    """
    n_layers = int(model.cfg.n_layers)
    names = list(model.hook_dict)
    skip = skip_clean_layers and layers_can_be_skipped(_decoder_owner(model))
    starts = tuple(first_layer(hooks, names, n_layers) if skip else 0 for hooks in conditions)
    width = conditions_per_pass(model, prefix) if per_pass == "auto" else int(per_pass)
    if width < 1:
        raise VLMInputError(f"per_pass must be at least 1 (or 'auto'), got {per_pass!r}")
    residuals: dict[int, Tensor] = {}
    record = [
        (_residual_name(layer, n_layers), _keep(residuals, layer))
        for layer in sorted({s for s in starts if s > 0})
    ]
    # the clean run is condition 0: it starts at layer 0, so it runs in the first pass, which
    # records the clean residual stream the later passes start from
    runs, first = [record, *conditions], (0, *starts)
    keep = readout or (lambda logits: logits)
    out: list[Tensor | None] = [None] * len(runs)
    order = sorted(range(len(runs)), key=lambda i: first[i])
    plan = plan_passes([first[i] for i in order], n_layers, width, pass_cost(model.device))
    scratch: dict[tuple[Any, ...], Tensor] = {}  # key/value buffers shared by the passes
    with torch.no_grad():
        for a, b in plan:
            group = order[a:b]
            start = min(first[i] for i in group)
            logits = _stacked_pass(
                model, prefix, [runs[i] for i in group], start, residuals, scratch
            )
            for slot, index in enumerate(group):
                out[index] = keep(logits[slot])
            del logits
    results = [t for t in out if t is not None]
    return SuffixRuns(results[0], results[1:], starts, len(plan))


def _residual_name(layer: int, n_layers: int) -> str:
    return hook_names.resid_pre(layer) if layer < n_layers else hook_names.resid_post(n_layers - 1)


def _keep(store: dict[int, Tensor], layer: int) -> Callable[..., None]:
    def keep(tensor: Tensor, hook: Any) -> None:  # noqa: ARG001
        store[layer] = tensor.detach().clone()

    return keep


def _stacked_pass(
    model: Any,
    prefix: PrefixCache,
    conditions: list[HookList],
    start: int,
    residuals: dict[int, Tensor],
    scratch: dict[tuple[Any, ...], Tensor],
) -> list[Float[Tensor, "batch suffix d_vocab"]]:
    batch = prefix.batch
    rows, copies = len(batch), len(conditions)
    inputs = suffix_inputs(batch, prefix.upto, model.adapter.image_input_keys, prefix.position_ids)
    input_ids = inputs.pop("input_ids")
    kwargs: dict[str, Any] = {k: _repeat(k, v, copies, rows) for k, v in inputs.items()}
    if start == 0:
        kwargs["input_ids"] = _along_batch(input_ids, copies)
    else:
        kwargs["inputs_embeds"] = _along_batch(residuals[start], copies)
    kwargs["past_key_values"] = _repeated_cache(prefix, copies, start, scratch)
    owned: dict[tuple[int, int], weakref.ref[Tensor]] = {}
    hooks = [
        (name, _rows_hook(fn, slice(c * rows, (c + 1) * rows), copies * rows, owned))
        for c, condition in enumerate(conditions)
        for name, fn in condition
    ]
    with (
        model.bridge.hooks(fwd_hooks=hooks),
        _layers_from(model, start),
        query_block(prefix.upto),
    ):
        logits = model.hf_model(use_cache=True, **kwargs).logits
    return list(logits.split(rows))


def _repeat(name: str, value: Any, copies: int, rows: int) -> Any:
    """Repeat a per-sequence input along the batch (condition-major). ``position_ids`` are
    repeated along their batch axis (dim 0 of ``[batch, suffix]``, dim 1 of a multi-axis
    ``[axes, batch, suffix]``) unless one row is shared by every sequence; non-tensors stay."""
    if not isinstance(value, Tensor) or value.ndim == 0:
        return value
    if name == "position_ids":
        axis = 1 if value.ndim == 3 else 0
        if value.shape[axis] == 1 or copies == 1:
            return value
        if value.shape[axis] != rows:
            raise VLMInputError(
                f"position_ids have {value.shape[axis]} rows for a batch of {rows}; give one "
                "row per sequence (or one shared row)"
            )
        return value.repeat(*[copies if d == axis else 1 for d in range(value.ndim)])
    if value.shape[0] != rows:
        raise VLMInputError(
            f"input {name!r} has {value.shape[0]} rows for a batch of {rows}; stacked suffix "
            "passes repeat per-sequence inputs, run this batch one condition per pass (per_pass=1)"
        )
    return _along_batch(value, copies)


def _along_batch(value: Tensor, copies: int) -> Tensor:
    """`copies` copies of `value` along dim 0 (condition-major)."""
    return value if copies == 1 else value.repeat(copies, *([1] * (value.ndim - 1)))


def _repeated_cache(
    prefix: PrefixCache, copies: int, start: int, scratch: dict[tuple[Any, ...], Tensor]
) -> Any:
    """A new ``Cache`` (of ``DynamicLayer`` objects) for a pass of `copies` stacked conditions:
    layers ``start ..`` hold the prefix keys and values for every condition (`_StackedLayer`,
    writing into the buffers of `scratch`), layers below keep the prefix tensors (only their
    length is read). The prefix cache is never written."""
    layers: list[Any] = []
    for index, layer in enumerate(prefix.past_key_values.layers):
        if type(layer) is not DynamicLayer:
            raise VLMInputError(
                f"layer {index} of the prefix cache is a {type(layer).__name__}; stacked suffix "
                "passes support full-attention caches only, run them one per pass (per_pass=1)"
            )
        if index < start:
            layers.append(layer)
        else:
            if layer.keys is None or layer.values is None:
                raise VLMInputError(f"layer {index} of the prefix cache is empty; rebuild it")
            layers.append(_StackedLayer(layer.keys, layer.values, copies, scratch))
    return Cache(layers=layers)


class _StackedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose prefix stands for `copies` stacked copies of itself.

    Its one update (a suffix pass calls it once per layer) writes the repeated prefix and the
    new keys into a buffer of `scratch` that every layer of the pass, and every pass of a
    `run_suffixes` call, shares: a layer's keys are read only by its own attention, before the
    next layer overwrites them. That saves allocating (and page-faulting) ``copies`` prefixes per
    layer, which cost more than the attention itself on CPU; the cache is unusable afterwards.
    """

    keys: Tensor
    values: Tensor

    def __init__(
        self, keys: Tensor, values: Tensor, copies: int, scratch: dict[tuple[Any, ...], Tensor]
    ) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values, self.copies, self.scratch = keys, values, copies, scratch

    def update(self, key_states: Tensor, value_states: Tensor, *_: Any, **__: Any) -> Any:
        if self.copies == 0:
            raise RuntimeError("a stacked suffix cache takes one update per layer")
        keys_out, values_out = self._buffer("k", key_states), self._buffer("v", value_states)
        self.keys = _extended(self.keys, key_states, self.copies, keys_out)
        self.values = _extended(self.values, value_states, self.copies, values_out)
        self.copies = 0
        return self.keys, self.values

    def _buffer(self, kind: str, new: Tensor) -> Tensor:
        shape = (*new.shape[:-2], self.keys.shape[-2] + new.shape[-2], new.shape[-1])
        key = (kind, shape, new.dtype, new.device)
        if key not in self.scratch:
            self.scratch[key] = new.new_empty(shape)
        return self.scratch[key]


def _extended(
    cached: Float[Tensor, "rows head pos d"],
    new: Float[Tensor, "stack head q d"],
    copies: int,
    out: Float[Tensor, "stack head pos_q d"],
) -> Float[Tensor, "stack head pos_q d"]:
    """``cat([cached repeated `copies` times along the batch, new], dim=-2)``, written in `out`."""
    length = cached.shape[-2]
    repeated = out[..., :length, :].unflatten(0, (copies, cached.shape[0]))
    repeated.copy_(cached.unsqueeze(0).expand_as(repeated))
    out[..., length:, :].copy_(new)
    return out


def _rows_hook(
    fn: Callable[..., Any],
    rows: slice,
    total: int,
    owned: dict[tuple[int, int], weakref.ref[Tensor]],
    fix: str = "run such conditions one per pass (per_pass=1)",
) -> Callable[..., Any]:
    """`fn` applied to its condition's rows of a stacked activation (`fix`: what the error
    for a tensor without the stacked batch first tells the user to do).

    A result that is a new tensor is written into a copy of the activation, made once per hook
    point and pass (`owned`, keyed by hook point and tensor), so the activation other code may
    still hold is never edited: a copy made at one hook point is not another's to write into
    (in a post-norm block the attention input is the residual the block adds back)."""

    def on_rows(tensor: Tensor, hook: Any) -> Tensor | None:
        if tensor.ndim == 0 or tensor.shape[0] != total:
            raise VLMInputError(
                f"hook on {getattr(hook, 'name', '?')} got a tensor of shape "
                f"{tuple(tensor.shape)}, whose first dimension is not the stacked batch "
                f"({total}); {fix}"
            )
        piece = tensor[rows]
        result = fn(piece, hook=hook)
        if result is None or result is piece or _same_memory(result, piece):
            return None
        ref = owned.get((id(hook), id(tensor)))
        if ref is None or ref() is not tensor:
            tensor = tensor.clone()
            owned[(id(hook), id(tensor))] = weakref.ref(tensor)
        tensor[rows] = result
        return tensor

    edges = blocked_edges(fn)
    if edges is not None:  # a mask-only knockout stays mask-only on its rows

        def rows_edges(shape: tuple[int, int, int, int], name: str, device: Any) -> Tensor:
            inner = edges((rows.stop - rows.start, *shape[1:]), name, device)
            inner = inner.expand(rows.stop - rows.start, *inner.shape[1:])
            out = torch.zeros(shape[0], *inner.shape[1:], dtype=torch.bool, device=device)
            out[rows] = inner
            return out

        mask_only(on_rows, rows_edges)
    return on_rows


def _same_memory(a: Tensor, b: Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


@contextmanager
def _layers_from(model: Any, start: int) -> Iterator[None]:
    """Make the decoder run only layers ``start ..`` (its layer list, temporarily)."""
    if start == 0:
        yield
        return
    owner = _decoder_owner(model)
    full = owner.layers
    if not isinstance(full, nn.ModuleList):  # pragma: no cover - _decoder_owner checked it
        raise VLMInputError("the decoder's layers are not a ModuleList")
    owner.layers = nn.ModuleList(list(full)[start:])  # nn.Module.__setattr__ registers it
    try:
        yield
    finally:
        owner.layers = full


def layers_can_be_skipped(decoder: nn.Module) -> bool:
    """Whether a pass may start at any layer of `decoder`: HF decoders that pick each layer's
    mask by its index (``config.layer_types[i]``, Qwen2's sliding-window layers) would give a
    shortened layer list the wrong masks unless every layer has the same type."""
    types = getattr(getattr(decoder, "config", None), "layer_types", None)
    return types is None or len(set(types)) <= 1


def _decoder_owner(model: Any) -> nn.Module:
    """The module whose ``layers`` list holds the decoder blocks."""
    first = model.bridge.blocks[0]
    for module in model.hf_model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and layers[0] is first:
            return module
    raise VLMInputError(
        f"cannot find the decoder layer list of this {model.family} model; run with "
        "skip_clean_layers=False"
    )

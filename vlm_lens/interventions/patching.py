"""Activation patching: write a source run's activations into a target run, at the positions of
a role.

Source and target may differ in length, padding and image count: the k-th selected position of
a source sequence is written into the k-th selected position of the target sequence (aligned by
role), so ``positions="gate"`` moves the gate of image A onto the gate of image B wherever each
sits. `record` runs the source once and keeps only those positions; `patch` returns the hooks.

The paper's two sites are built in: `residual_site` (the residual stream entering one layer) and
`attention_input_sites` (the attention input, after the norm, at every layer from ``l`` to the
end, which changes what the gate queries and what other tokens read from it, but not its
residual stream). Any ``[batch, pos, ...]`` hook works as a site (``hook_z``, ``hook_v``...).

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("chameleon")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> image_a = sample_image(seed=0, size=tiny.image_size)
    >>> image_b = sample_image(seed=1, size=tiny.image_size)
    >>> a = model.prepare(images=image_a, text=tiny.prompt)
    >>> b = model.prepare(images=image_b, text=tiny.prompt + " longer")
    >>> source = record(model, a, sites=[residual_site(1)], positions="gate")
    >>> logits = model.run_with_hooks(b, fwd_hooks=patch(source, b))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
from vlm_lens.positions import PositionSpec, describe, select


@runtime_checkable
class _Runs(Protocol):
    def run_with_hooks(self, batch: Batch, *, fwd_hooks: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class PatchSource:
    """Activations of a source run at the selected positions, per site and sequence.

    Attributes:
        activations: hook name -> one tensor ``[n_positions, ...]`` per source sequence.
        positions: the `PositionSpec` they were taken at (reused to find target positions).
        n_sequences: number of source sequences.
        last_logits: ``[n_sequences, d_vocab]`` logits of the source run at each sequence's last
            token (the clean source distribution of the patching metrics).

    Example:
        >>> source = record(model, a, sites=[residual_site(1)], positions="gate")  # doctest: +SKIP
        >>> source.sites, len(source.activations["blocks.1.hook_resid_pre"])  # doctest: +SKIP
        (['blocks.1.hook_resid_pre'], 1)
    """

    activations: dict[str, list[Tensor]]
    positions: PositionSpec
    n_sequences: int
    last_logits: Tensor | None = None

    @property
    def sites(self) -> list[str]:
        """The hook names recorded."""
        return list(self.activations)


def residual_site(layer: int) -> str:
    """The paper's residual patching site: the residual stream entering `layer`.

    Example:
        >>> residual_site(3)
        'blocks.3.hook_resid_pre'
    """
    return hook_names.resid_pre(layer)


def attention_input_sites(start_layer: int, n_layers: int) -> list[str]:
    """The paper's attention-block site: the attention input at every layer from `start_layer`
    to the last (cumulative).

    Example:
        >>> attention_input_sites(2, n_layers=4)
        ['blocks.2.attn.hook_in', 'blocks.3.attn.hook_in']
    """
    if not 0 <= start_layer < n_layers:
        raise ValueError(f"start_layer must be in [0, {n_layers}), got {start_layer}")
    return [hook_names.attn_in(layer) for layer in range(start_layer, n_layers)]


def record(
    model: _Runs,
    batch: Batch,
    *,
    sites: str | Sequence[str],
    positions: PositionSpec = "gate",
) -> PatchSource:
    """Run `batch` and keep the activations of `sites` at `positions` (nothing else).

    Args:
        model: a `HookedVLM`.
        batch: the source batch.
        sites: hook names with a position dimension at dim 1.
        positions: which positions to keep (default: the gate).

    Returns:
        A `PatchSource` for `patch`.

    Example:
        >>> source = record(model, a, sites=[residual_site(1)], positions="gate")  # doctest: +SKIP
        >>> source.activations[residual_site(1)][0].shape  # one gate of width 32  # doctest: +SKIP
        torch.Size([1, 32])
    """
    site_list = [sites] if isinstance(sites, str) else list(sites)
    _check_sites(site_list)
    mask = select(positions, batch.layout)
    kept: dict[str, list[Tensor]] = {}

    def keeper(site: str) -> Any:
        def keep(tensor: Tensor, hook: Any) -> None:  # noqa: ARG001
            index = [row.nonzero().flatten().to(tensor.device) for row in mask]
            kept[site] = [tensor[b, idx].detach().clone() for b, idx in enumerate(index)]

        return keep

    with torch.no_grad():
        fwd_hooks = [(site, keeper(site)) for site in site_list]
        logits = model.run_with_hooks(batch, fwd_hooks=fwd_hooks)
    missing = [s for s in site_list if s not in kept]
    if missing:
        raise VLMInputError(f"hook(s) {missing} did not fire; check the names (vlm_lens.hooks)")
    last = batch.layout.mask("last").to(logits.device)
    return PatchSource({s: kept[s] for s in site_list}, positions, len(batch), logits[last].clone())


def patch(
    source: PatchSource,
    target: Batch | TokenLayout,
    *,
    positions: PositionSpec | None = None,
    sites: str | Sequence[str] | None = None,
) -> Intervention:
    """Hooks that write `source` activations into the target run at the same role's positions.

    Args:
        source: from `record` (one source sequence is broadcast to every target sequence).
        target: the batch the hooks will run on (or its layout).
        positions: target positions (default: the spec the source was recorded at). Each
            target sequence must select as many positions as its source sequence.
        sites: a subset of the recorded sites (default: all).

    Returns:
        An `Intervention`; ``earliest_position`` is the first patched position.

    Raises:
        VLMInputError: if batch sizes or position counts do not match.

    Example:
        >>> source = record(model, a, sites=attention_input_sites(3, 32))  # doctest: +SKIP
        >>> logits = model.run_with_hooks(b, fwd_hooks=patch(source, b))  # doctest: +SKIP
    """
    layout = layout_of(target)
    spec = source.positions if positions is None else positions
    mask = select(spec, layout)
    n_target = layout.shape[0]
    if source.n_sequences not in (1, n_target):
        raise VLMInputError(
            f"the source has {source.n_sequences} sequences and the target {n_target}; record "
            "one source per target sequence, or a single one to broadcast"
        )
    site_list = source.sites if sites is None else ([sites] if isinstance(sites, str) else sites)
    for site in site_list:
        if site not in source.activations:
            raise VLMInputError(f"site {site!r} was not recorded; recorded: {source.sites}")
    index = [row.nonzero().flatten() for row in mask]
    for b, idx in enumerate(index):
        src = source.activations[site_list[0]][b if source.n_sequences > 1 else 0]
        if len(idx) != len(src):
            raise VLMInputError(
                f"target sequence {b} has {len(idx)} position(s) for {describe(spec)!r} but the "
                f"source has {len(src)}; patch between prompts with the same number of images"
            )
    length = layout.shape[1]

    def writer(site: str) -> Any:
        return lambda tensor, hook: write(tensor, hook, site)

    def write(tensor: Float[Tensor, "batch pos ..."], hook: Any, site: str) -> Tensor | None:
        if tensor.shape[0] != n_target:
            raise VLMInputError(
                f"{hook.name}: the patch was built for {n_target} sequences but the model ran "
                f"{tensor.shape[0]}; build it from the batch you run"
            )
        offset = query_offset()
        if offset is None:
            if tensor.shape[1] < length:  # a cached generation step: only new positions
                return None
            offset = 0
        if offset + tensor.shape[1] != length:
            raise VLMInputError(
                f"{hook.name}: the patch was built for {length} positions but the model ran "
                f"positions {offset}..{offset + tensor.shape[1] - 1}; build it from the batch "
                "you run"
            )
        out = tensor.clone()
        for b, idx in enumerate(index):
            values = source.activations[site][b if source.n_sequences > 1 else 0]
            if len(idx) and int(idx.min()) < offset:
                raise VLMInputError(
                    f"{hook.name}: the patch writes position {int(idx.min())} of sequence {b}, "
                    f"inside the cached prefix (positions < {offset}); reuse a prefix only up "
                    "to the intervention's earliest position"
                )
            out[b, (idx - offset).to(tensor.device)] = values.to(tensor.device, tensor.dtype)
        return out

    return Intervention(
        [(site, writer(site)) for site in site_list],
        attention_of(target).earliest_affected(first_true(mask, length)),
    )


def _check_sites(sites: list[str]) -> None:
    for site in sites:
        multimodal = site == hook_names.IMAGE_EMBEDS or site.startswith(
            f"{hook_names.DEEPSTACK_EMBEDS}."
        )
        if site.endswith(("hook_attn_scores", "hook_pattern")) or multimodal:
            raise ValueError(
                f"{site!r} has no [batch, pos, ...] layout; patch residual, attention-input, "
                "q/k/v/z or MLP sites (to edit image features use ablate_image_tokens)"
            )

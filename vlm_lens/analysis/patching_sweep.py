"""Activation patching at the gate, layer by layer: does the image's class follow the patch?

For each pair (a *source* image of class A, a *target* image of class B, same prompt), the
source's activation at the gate is written into the target run (`vlm_lens.interventions.patch`)
at one layer (``site="residual"``: the residual stream entering the layer) or at every layer
from ``l`` to the end (``site="attention"``: the attention input). At the target's last token:

* **flip rate**: the fraction of pairs whose prediction flips toward the source class:
  ``d = logit[target class] - logit[source class]`` is positive unpatched and negative patched
  (`vlm_lens.metrics.distributions.flip_toward_source`; the paper's v2/v3 "accuracy");
* **similarity**: ``Σ_v min(p_v, q_v)`` between the patched target distribution ``p`` and the
  clean source distribution ``q`` (the paper's v1 metric).

Baselines, from the unpatched runs: the fraction of pairs whose target already prefers the
source class, and the similarity of the clean target to the clean source.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("chameleon")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> def batch(seed):
    ...     image = sample_image(seed=seed, size=tiny.image_size)
    ...     return model.prepare(images=image, text=tiny.prompt)
    >>> pair = PatchPair(batch(0), batch(1), source_token=5, target_token=6)
    >>> result = patching_sweep(model, [pair], site="residual")
    >>> result.to_frame().columns.tolist()[:4]
    ['layer', 'site', 'flip_rate', 'similarity']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from vlm_lens.analysis.persist import register_result
from vlm_lens.analysis.provenance import Provenance
from vlm_lens.analysis.token_ids import check_token_ids, vocabulary_size
from vlm_lens.batch import Batch
from vlm_lens.data.distributed import map_shared
from vlm_lens.engine.sweep import CLEAN, run_sweep
from vlm_lens.errors import VLMInputError
from vlm_lens.interventions.patching import (
    attention_input_sites,
    patch,
    record,
    residual_site,
)
from vlm_lens.metrics.distributions import (
    flip_toward_source,
    logit_difference,
    softmax_intersection,
)
from vlm_lens.model import HookedVLM
from vlm_lens.positions import PositionSpec

PatchSite = Literal["residual", "attention"]


@dataclass(frozen=True)
class PatchPair:
    """A source batch patched into a target batch (same number of prompts).

    Attributes:
        source: prompts whose activations are patched in (class A images).
        target: prompts that receive them (class B images).
        source_token: token id of the source class name (an int, or one per prompt).
        target_token: token id of the target class name.

    Example:
        >>> pair = PatchPair(cats, dogs, source_token=cat_id, target_token=dog_id)  # doctest: +SKIP
    """

    source: Batch
    target: Batch
    source_token: int | Int[Tensor, " batch"]
    target_token: int | Int[Tensor, " batch"]

    def __post_init__(self) -> None:
        for name in ("source_token", "target_token"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, Tensor)):
                raise VLMInputError(
                    f"{name} must be a token id (int) or one per prompt (int tensor), got "
                    f"{value!r}; look class names up with model.tokenizer"
                )
            negative = value < 0 if isinstance(value, int) else bool((value < 0).any())
            if negative:  # a negative index would read the vocabulary from its end
                raise VLMInputError(
                    f"PatchPair.{name} holds a negative token id ({value!r}); token ids count "
                    "from 0. Look the class name up with "
                    "model.tokenizer.encode(' cat', add_special_tokens=False)"
                )


@register_result
@dataclass(frozen=True)
class PatchingSweepResult:
    """Per-layer patching metrics.

    Attributes:
        site: ``"residual"`` or ``"attention"``.
        layers: ``[n_layers]`` patched layer (start layer for ``"attention"``).
        flip_rate: ``[n_layers]`` fraction of pairs flipped toward the source class.
        similarity: ``[n_layers]`` mean ``Σ min(p, q)`` to the clean source distribution.
        baseline_flip_rate: fraction of unpatched targets that already prefer the source class.
        baseline_similarity: mean similarity of the clean target to the clean source.
        d_clean: ``[n_pairs]`` logit difference (target minus source class) unpatched.
        d_patched: ``[n_layers, n_pairs]`` the same, patched.
        similarity_per_pair: ``[n_layers, n_pairs]``.
        meta: what produced the result: model, inputs, settings (`vlm_lens.analysis.provenance`);
            `save_result` keeps it.

    Example:
        >>> result = patching_sweep(model, pair, site="attention", layers=[0, 1])  # doctest: +SKIP
        >>> result.flip_rate.shape, result.d_patched.shape  # 2 layers, 1 pair  # doctest: +SKIP
        ((2,), (2, 1))
    """

    site: str
    layers: np.ndarray
    flip_rate: np.ndarray
    similarity: np.ndarray
    baseline_flip_rate: float
    baseline_similarity: float
    d_clean: np.ndarray
    d_patched: np.ndarray
    similarity_per_pair: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_pairs(self) -> int:
        """Number of (source, target) prompt pairs."""
        return int(self.d_clean.shape[0])

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: ``layer, site, flip_rate, similarity, baseline_flip_rate,
        baseline_similarity, n_pairs``."""
        return pd.DataFrame(
            {
                "layer": self.layers,
                "site": self.site,
                "flip_rate": self.flip_rate,
                "similarity": self.similarity,
                "baseline_flip_rate": self.baseline_flip_rate,
                "baseline_similarity": self.baseline_similarity,
                "n_pairs": self.n_pairs,
            }
        )


def patching_sweep(
    model: HookedVLM,
    pairs: PatchPair | Iterable[PatchPair],
    *,
    site: PatchSite = "residual",
    layers: Sequence[int] | None = None,
    positions: PositionSpec = "gate",
    progress: bool = False,
    reuse_prefix: bool = True,
    per_pass: int | Literal["auto"] = "auto",
) -> PatchingSweepResult:
    """Patch the source's `positions` into the target at each layer and measure the effect.

    Args:
        model: the `HookedVLM`.
        pairs: one `PatchPair` or several (each may hold a batch of prompts).
        site: ``"residual"`` (one layer at a time) or ``"attention"`` (attention input from the
            layer to the end).
        layers: layers to sweep (default: all).
        positions: where to patch (default: the gate; aligned by role, so source and target
            prompts may differ in length).
        progress: show a progress bar over pairs.
        reuse_prefix: run the target's clean prefix (everything before the first patched
            position) once and only the rest per layer (`vlm_lens.engine.sweep.run_sweep`);
            ``False`` runs each layer in full.
        per_pass: layers stacked in one suffix pass (`vlm_lens.engine.sweep.run_sweep`).

    Returns:
        A `PatchingSweepResult`.

    Example:
        >>> result = patching_sweep(model, pairs, site="residual", progress=True)  # doctest: +SKIP
        >>> result.to_frame()[["layer", "flip_rate", "similarity"]]  # doctest: +SKIP
    """
    if site not in ("residual", "attention"):
        raise ValueError(f"site must be 'residual' or 'attention', got {site!r}")
    n_layers = model.cfg.n_layers
    layer_list = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    pair_list = [pairs] if isinstance(pairs, PatchPair) else list(pairs)
    if not pair_list:
        raise VLMInputError("patching_sweep needs at least one PatchPair")
    vocab = vocabulary_size(model)
    for pair in pair_list:
        check_token_ids(pair.source_token, vocab, "PatchPair.source_token")
        check_token_ids(pair.target_token, vocab, "PatchPair.target_token")
    sites = _sites(site, layer_list, n_layers)
    provenance = Provenance(
        "patching_sweep",
        model,
        site=site,
        layers=layer_list,
        positions=positions,
        source_tokens=[p.source_token for p in pair_list],
        target_tokens=[p.target_token for p in pair_list],
    )
    for pair in pair_list:
        provenance.add(pair.source)
        provenance.add(pair.target)
        if len(pair.source) != len(pair.target):
            raise VLMInputError(
                f"a PatchPair has {len(pair.source)} source and {len(pair.target)} target "
                "prompts; pair them one to one"
            )

    def step(pair: PatchPair) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        source = record(
            model, pair.source, sites=sorted(set(sum(sites.values(), []))), positions=positions
        )
        assert source.last_logits is not None
        q_logits = source.last_logits
        conditions = {
            str(layer): patch(source, pair.target, sites=sites[layer]) for layer in layer_list
        }
        runs = run_sweep(
            model, pair.target, conditions, reuse_prefix=reuse_prefix, per_pass=per_pass
        )
        clean = runs.logits[CLEAN]
        d0 = logit_difference(clean, _ids(pair.target_token), _ids(pair.source_token))
        per_layer_d, per_layer_sim = [], []
        for layer in layer_list:
            logits = runs.logits[str(layer)]
            per_layer_d.append(
                logit_difference(logits, _ids(pair.target_token), _ids(pair.source_token))
            )
            per_layer_sim.append(softmax_intersection(logits, q_logits))
        return (
            d0.cpu(),
            softmax_intersection(clean, q_logits).cpu(),
            torch.stack(per_layer_d).cpu(),
            torch.stack(per_layer_sim).cpu(),
        )

    outputs = map_shared(step, pair_list, desc="patching", progress=progress)
    d_clean, base_sims, d_patched, sims = (list(x) for x in zip(*outputs, strict=True))
    d_clean_all = torch.cat(d_clean).double()
    d_patched_all = torch.cat(d_patched, dim=1).double()
    sims_all = torch.cat(sims, dim=1).double()
    flips = flip_toward_source(d_clean_all[None].expand_as(d_patched_all), d_patched_all)
    return PatchingSweepResult(
        site=site,
        layers=np.array(layer_list),
        flip_rate=flips.double().mean(dim=1).numpy(),
        similarity=sims_all.mean(dim=1).numpy(),
        baseline_flip_rate=float((d_clean_all < 0).double().mean()),
        baseline_similarity=float(torch.cat(base_sims).double().mean()),
        d_clean=d_clean_all.numpy(),
        d_patched=d_patched_all.numpy(),
        similarity_per_pair=sims_all.numpy(),
        meta=provenance.meta(),
    )


def _sites(site: PatchSite, layers: list[int], n_layers: int) -> dict[int, list[str]]:
    if site == "residual":
        return {layer: [residual_site(layer)] for layer in layers}
    return {layer: attention_input_sites(layer, n_layers) for layer in layers}


def _ids(token: int | Tensor) -> int | Tensor:
    return token if isinstance(token, int) else torch.as_tensor(token).cpu()

"""Layer-window knockout sweep: the paper's progressive knockout, one window of layers at a time.

For each window (by default the last ``w`` layers for ``w = 1 .. n_layers``, as in the paper's
"knock out the gate in the last w layers" curves) a knockout (default `gate_knockout`) is applied
in those layers only, and the last-token prediction is compared with the clean run's: the top
token, and the log-probability the knocked-out run gives to the clean top token. The windows share
the clean prefix before the knockout's earliest position (`vlm_lens.engine.sweep.run_sweep`),
so ``k`` windows cost one prefix pass, the clean suffix and a few wide suffix passes that each
start at the first knocked-out layer (`vlm_lens.engine.suffix_stack`).

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("emu3")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    >>> result = knockout_sweep(model, batch)
    >>> result.to_frame().columns.tolist()
    ['window', 'layers', 'changed_rate', 'clean_token_logprob']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from vlm_lens.analysis._common import map_batches
from vlm_lens.analysis.persist import register_result
from vlm_lens.analysis.provenance import Provenance
from vlm_lens.batch import Batch
from vlm_lens.engine.intervention import Intervention
from vlm_lens.engine.sweep import CLEAN, run_sweep
from vlm_lens.interventions import gate_knockout, last_layers
from vlm_lens.model import HookedVLM

Knockout = Callable[..., Intervention]


@register_result
@dataclass(frozen=True)
class KnockoutSweepResult:
    """Per-window effect of a knockout on the last-token prediction.

    Attributes:
        windows: the layer windows (tuples of layer indices).
        clean_tokens: ``[n]`` the clean top token of each prompt.
        tokens: ``[windows, n]`` the top token under each window's knockout.
        clean_token_logprob: ``[windows, n]`` log-probability of the clean top token under the
            knockout (the clean run's own is ``clean_logprob``).
        clean_logprob: ``[n]`` log-probability of the clean top token in the clean run.
        meta: what produced the result: model, inputs, settings (`vlm_lens.analysis.provenance`);
            `save_result` keeps it.

    Example:
        >>> result.changed_rate  # fraction of prompts whose top token changed  # doctest: +SKIP
    """

    windows: tuple[tuple[int, ...], ...]
    clean_tokens: np.ndarray
    tokens: np.ndarray
    clean_token_logprob: np.ndarray
    clean_logprob: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def changed_rate(self) -> np.ndarray:
        """``[windows]`` fraction of prompts whose top token differs from the clean one."""
        return (self.tokens != self.clean_tokens[None]).mean(axis=1)

    def to_frame(self) -> pd.DataFrame:
        """One row per window: ``window, layers, changed_rate, clean_token_logprob`` (mean)."""
        return pd.DataFrame(
            {
                "window": np.arange(len(self.windows)),
                "layers": [list(w) for w in self.windows],
                "changed_rate": self.changed_rate,
                "clean_token_logprob": self.clean_token_logprob.mean(axis=1),
            }
        )


def knockout_sweep(
    model: HookedVLM,
    batches: Batch | Iterable[Batch],
    *,
    knockout: Knockout = gate_knockout,
    windows: Sequence[int | Iterable[int]] | None = None,
    reuse_prefix: bool = True,
    progress: bool = False,
    per_pass: int | Literal["auto"] = "auto",
    **knockout_kwargs: Any,
) -> KnockoutSweepResult:
    """Apply `knockout` in each layer window and measure the last-token prediction.

    Args:
        model: the `HookedVLM`.
        batches: one `Batch` or several.
        knockout: builds the hooks, called as ``knockout(batch, layers=window, **kwargs)``
            (`gate_knockout`, `image_to_text_knockout`, `random_image_knockout`...).
        windows: an int ``w`` means the last ``w`` layers; an iterable is a set of layers
            (default: the last ``1 .. n_layers``).
        reuse_prefix: share the clean prefix between windows (``False``: full runs).
        progress: show a progress bar over batches.
        per_pass: windows stacked in one suffix pass (`vlm_lens.engine.sweep.run_sweep`).
        **knockout_kwargs: passed to `knockout` (``mode=``, ``heads=``...).

    Returns:
        A `KnockoutSweepResult`.
    """
    n_layers = int(model.cfg.n_layers)
    specs = list(range(1, n_layers + 1)) if windows is None else list(windows)
    window_layers = tuple(
        tuple(last_layers(n_layers, w)) if isinstance(w, int) else tuple(int(x) for x in w)
        for w in specs
    )
    provenance = Provenance(
        "knockout_sweep", model, knockout=knockout, windows=window_layers, **knockout_kwargs
    )

    def step(batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        conditions = {
            str(i): knockout(batch, layers=list(layers), **knockout_kwargs)
            for i, layers in enumerate(window_layers)
        }
        runs = run_sweep(model, batch, conditions, reuse_prefix=reuse_prefix, per_pass=per_pass)
        clean = torch.log_softmax(runs.logits[CLEAN].double(), dim=-1)
        top = clean.argmax(dim=-1)
        per = [torch.log_softmax(runs.logits[str(i)].double(), dim=-1) for i in conditions]
        return (
            top.cpu(),
            clean.gather(1, top[:, None])[:, 0].cpu(),
            torch.stack([p.argmax(dim=-1) for p in per]).cpu(),
            torch.stack([p.gather(1, top[:, None])[:, 0] for p in per]).cpu(),
        )

    # batches read lazily: a generator keeps one in memory
    outputs = map_batches(step, batches, provenance, progress=progress, desc="knockout_sweep")
    clean_tokens, clean_logprob, tokens, logprob = (list(x) for x in zip(*outputs, strict=True))
    return KnockoutSweepResult(
        windows=window_layers,
        clean_tokens=torch.cat(clean_tokens).numpy(),
        tokens=torch.cat(tokens, dim=1).numpy(),
        clean_token_logprob=torch.cat(logprob, dim=1).numpy(),
        clean_logprob=torch.cat(clean_logprob).numpy(),
        meta=provenance.meta(),
    )

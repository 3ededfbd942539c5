"""`run_sweep`: many interventions on one batch, sharing the clean prefix they cannot change.

Every `Intervention` knows the earliest position it can affect (`Intervention.earliest`); the
positions before it are computed exactly as in the clean run. `run_sweep` runs the clean prefix
once (`HookedVLM.prefix_cache`, up to the smallest earliest position of the conditions that
leave every image token alone), then the clean suffix, then the conditions' suffixes several at
a time, stacked along the batch and each from the first layer it hooks
(`vlm_lens.engine.suffix_stack.run_suffixes`). So ``k`` conditions cost one prefix pass and about
``k / 2`` suffixes' worth of layers in ``k / 16`` wide passes, instead of ``k + 1`` full passes.
Conditions that change image positions, or plain hook lists (whose earliest position is
unknown), run in full.

With eager attention the suffix passes are bit-identical to the full runs. With SDPA they agree
to float rounding (about 1e-6 in fp32 logits): PyTorch's fused CPU kernel tiles queries and keys
with sizes that depend on the query length, and with ``is_causal`` it stops each query tile at the
tile's last row, so a row's online-softmax accumulation can be split into different key blocks in
the shorter pass.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.interventions import gate_knockout, last_layers
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("chameleon")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    >>> conditions = {f"last {w}": gate_knockout(batch, layers=last_layers(2, w)) for w in (1, 2)}
    >>> result = run_sweep(model, batch, conditions)
    >>> result.names, result.logits["clean"].shape[0], result.upto == conditions["last 1"].earliest
    (('last 1', 'last 2'), 1, True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens.batch import Batch
from vlm_lens.engine.intervention import Intervention
from vlm_lens.engine.prefix import reusable_from
from vlm_lens.engine.suffix_stack import run_suffixes
from vlm_lens.types import HookList

if TYPE_CHECKING:  # the facade sits above the engine; only its type is named here
    from vlm_lens.model import HookedVLM

Readout = Callable[[Float[Tensor, "batch q d_vocab"], Batch, int], Tensor]
CLEAN = "clean"
"""Name of the unpatched run in `SweepResult.logits`."""


def last_token_logits(
    logits: Float[Tensor, "batch q d_vocab"], batch: Batch, offset: int
) -> Float[Tensor, "batch d_vocab"]:
    """The default readout: each sequence's last-token logits (float32, CPU) from a block of
    positions starting at `offset`.

    Example:
        >>> last_token_logits(logits, batch, offset=0)  # doctest: +SKIP
    """
    last = batch.layout.mask("last")[:, offset:].to(logits.device)
    return logits[last].float().cpu()


@dataclass(frozen=True)
class SweepResult:
    """Readouts of a sweep.

    Attributes:
        names: condition names, in order.
        logits: name -> readout (``[batch, d_vocab]`` last-token logits by default); also
            ``"clean"``, the run without hooks.
        upto: length of the reused prefix, or ``None`` when every condition ran in full.
        full_runs: names of the conditions that ran in full (they change image positions, or
            are plain hook lists whose earliest position is unknown).

    Example:
        >>> result.logits["clean"].shape  # doctest: +SKIP
        torch.Size([1, 266])
    """

    names: tuple[str, ...]
    logits: dict[str, Tensor]
    upto: int | None
    full_runs: tuple[str, ...]


def run_sweep(
    model: HookedVLM,
    batch: Batch,
    conditions: Mapping[str, HookList],
    *,
    reuse_prefix: bool = True,
    readout: Readout = last_token_logits,
    per_pass: int | Literal["auto"] = "auto",
) -> SweepResult:
    """Run every condition (and the clean run) on `batch`, reusing the clean prefix.

    Args:
        model: the `HookedVLM`.
        batch: one batch (several prompts run in one forward; for a shared prefix they must
            put their images at the same positions, e.g. right padding or equal-length
            prompts, because the prefix ends before the earliest affected position of any of
            them).
        conditions: name -> `Intervention` (or a plain ``fwd_hooks`` list, run in full).
        reuse_prefix: ``False`` runs everything in full (the naive baseline).
        readout: ``f(logits, batch, offset)`` applied to each run's logits of positions
            ``offset ..`` (default: `last_token_logits`).
        per_pass: conditions stacked in one suffix pass (``"auto"``: as many as a quarter of
            the free memory holds, at most 16; 1: one pass per condition). Results do not
            depend on it beyond float rounding under SDPA.

    Returns:
        A `SweepResult`.

    Raises:
        ValueError: for a condition named ``"clean"``.
    """
    if CLEAN in conditions:
        raise ValueError(f"{CLEAN!r} is the name of the unpatched run; rename that condition")
    length = int(batch.input_ids.shape[1])
    image_end = reusable_from(batch)  # past every image and bidirectional block
    earliest = {
        name: (cond.earliest if isinstance(cond, Intervention) else 0)
        for name, cond in conditions.items()
    }
    shared = [n for n, e in earliest.items() if reuse_prefix and image_end <= e < length]
    unchanged = [n for n, e in earliest.items() if reuse_prefix and e >= length]
    full = tuple(n for n in conditions if n not in shared and n not in unchanged)
    upto = min((earliest[n] for n in shared), default=None)
    if upto is None and unchanged and image_end < length:
        upto = max(image_end, length - 1)
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        if upto is not None:
            prefix = model.prefix_cache(batch, upto=upto)
            runs = run_suffixes(
                model,
                prefix,
                [list(conditions[n]) for n in shared],
                per_pass=per_pass,
                readout=lambda logits: readout(logits, batch, upto),
            )
            out[CLEAN] = runs.clean
            out.update(zip(shared, runs.logits, strict=True))
            for name in unchanged:  # affects no prompt position: the clean run's readout
                out[name] = out[CLEAN]
            del prefix
        else:
            out[CLEAN] = readout(model(batch), batch, 0)
        for name in full:
            logits = model.run_with_hooks(batch, fwd_hooks=list(conditions[name]))
            out[name] = readout(logits, batch, 0)
    names = tuple(conditions)
    return SweepResult(names, {CLEAN: out[CLEAN], **{n: out[n] for n in names}}, upto, full)

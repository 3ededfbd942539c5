"""Gate patching sweep over every layer: prefix reuse vs one full run per layer.

One `PatchPair` (two prompts of the same shape, different images); `patching_sweep` with
``site="residual"`` at every layer. It records the source once (a full pass), then either runs
the target in full for the clean run and every layer (naive, ``reuse_prefix=False``), or runs
the target's prefix up to the gate once and only the positions from the gate on per layer, one
layer per pass or several stacked per pass (each pass starting at its first patched layer).
Costs are printed in full-forward equivalents (the sweep's time over one vlm_lens SDPA forward).

    taskset -c 1 python benchmarks/patching_sweep_cost.py --threads 1 --layers 32 --repeats 3
    taskset -c 1 python benchmarks/patching_sweep_cost.py --threads 1 --layers 32 --repeats 3 \\
        --shape llava
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from _common import Setup, build, print_floor, sweep_parser, swept, time_sweep

from vlm_lens.analysis import PatchingSweepResult, PatchPair, patching_sweep
from vlm_lens.interventions.patching import record, residual_site


def other_prompt(s) -> object:
    """The same prompt with different image content (new VQ codes / new pixels)."""
    inputs = copy.copy(s.batch.inputs)
    gen = torch.Generator().manual_seed(1)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = torch.rand(inputs["pixel_values"].shape, generator=gen).to(
            inputs["pixel_values"]
        )
    else:
        ids = inputs["input_ids"].clone()
        image = s.batch.layout.mask("image")
        codes = torch.tensor(list(s.hf_eager.model.vocabulary_mapping.image_tokens))
        ids[image] = codes[torch.randint(len(codes), (int(image.sum()),), generator=gen)].to(ids)
        inputs["input_ids"] = ids
    return s.fast.batch_from_inputs(inputs)


def agreement(fast: PatchingSweepResult, naive: PatchingSweepResult) -> str:
    """Largest logit-difference gap and whether the flip rates match."""
    diff = float(np.abs(fast.d_patched - naive.d_patched).max())
    same = bool((fast.flip_rate == naive.flip_rate).all())
    return f"max |dd| {diff:.2e}, flip rates equal {same}"


def main() -> None:
    args = sweep_parser(__doc__.splitlines()[0]).parse_args()
    measure(build(args))


def measure(s: Setup, deadline: float | None = None) -> dict[str, Any]:
    """Time the sweep variants on `s` (``s.args``: repeats, ``--no-naive``, ``--sweep-layers``);
    print and return them (see `_common.time_sweep`)."""
    args = s.args
    pair = PatchPair(other_prompt(s), s.batch, source_token=5, target_token=6)
    layers = swept(args)
    sites = [residual_site(layer) for layer in layers]
    recording = {
        "of which: recording the source": lambda: record(
            s.fast, pair.source, sites=sites, positions="gate"
        )
    }
    out = time_sweep(
        args,
        s,
        lambda model, **kw: patching_sweep(model, pair, layers=layers, **kw),
        agreement,
        recording,
        deadline=deadline,
    )
    floor = print_floor(s, layers, source=True)
    return {"layers": layers, **out, "exact_floor": floor}


if __name__ == "__main__":
    main()

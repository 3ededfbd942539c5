"""Gate patching sweep over every layer: prefix reuse vs one full run per layer.

One `PatchPair` (two prompts of the same shape, different images); `patching_sweep` with
``site="residual"`` at every layer. It records the source once (a full pass), then either runs
the target in full for the clean run and every layer (naive, ``reuse_prefix=False``), or runs
the target's prefix up to the gate once and only the positions from the gate on per layer.
Costs are printed in full-forward equivalents (the sweep's time over one vlm_lens SDPA forward).

    taskset -c 1 python benchmarks/patching_sweep_cost.py --threads 1 --layers 32 --repeats 3
    taskset -c 1 python benchmarks/patching_sweep_cost.py --threads 1 --layers 32 --repeats 3 \\
        --shape llava
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from _common import build, median_times, parser, print_table

from vlm_lens.analysis import PatchPair, patching_sweep


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


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--with-bridge", action="store_true", help="also time the eager bridge")
    args = p.parse_args()
    s = build(args)
    pair = PatchPair(other_prompt(s), s.batch, source_token=5, target_token=6)
    out: dict[str, object] = {}

    def sweep(model, name: str, reuse: bool):
        def run() -> None:
            out[name] = patching_sweep(model, pair, reuse_prefix=reuse)

        return run

    variants = {
        "HF sdpa forward": lambda: s.hf_sdpa(**s.inputs),
        "vlm_lens forward (SDPA)": lambda: s.fast(s.batch),
        "naive sweep, vlm_lens SDPA (full runs)": sweep(s.fast, "naive", False),
        "sweep with prefix reuse, vlm_lens SDPA": sweep(s.fast, "reuse", True),
    }
    if args.with_bridge:
        variants["naive sweep, TL bridge eager (before)"] = sweep(s.bridge, "bridge", False)
    # sweeps are long: one warm-up forward, no warm-up sweep (--repeats 1 is enough for ratios)
    median_times({k: v for k, v in variants.items() if "forward" in k}, 1, s.sync)
    medians = median_times(variants, args.repeats, s.sync, warmup=False)
    fast, naive = out["reuse"], out["naive"]
    diff = float(np.abs(fast.d_patched - naive.d_patched).max())
    title = (
        f"{s.describe()}; {args.layers} layers patched; max |d_patched reuse - naive| = "
        f"{diff:.2e}; flip rates equal: {bool((fast.flip_rate == naive.flip_rate).all())}"
    )
    print_table(title, medians, "vlm_lens forward (SDPA)")


if __name__ == "__main__":
    main()

"""Residual-only cache (``resid_post`` of every layer): vlm_lens vs HF eager and SDPA.

HF variants return ``output_hidden_states``; TransformerLens' bridge (eager attention, as
before the fast path) and vlm_lens (SDPA) run ``run_with_cache`` with a residual filter.

    taskset -c 1 python benchmarks/residual_cache.py --threads 1 [--shape llava]
"""

from __future__ import annotations

from typing import Any

import torch
from _common import Setup, build, median_times, parser, print_table

from vlm_lens import hooks


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    measure(build(args))


def measure(s: Setup, deadline: float | None = None) -> dict[str, Any]:
    """Time the variants on `s` (repeats from ``s.args``); print and return the medians."""
    args, inputs, batch = s.args, s.inputs, s.batch
    resid = hooks.lm_filter("hook_resid_post")
    with torch.no_grad():
        _, cache = s.fast.run_with_cache(batch, names_filter=resid)
        hidden = s.hf_sdpa(**inputs, output_hidden_states=True).hidden_states
        same = torch.equal(cache[hooks.resid_post(0)], hidden[1])
    variants = {
        "HF eager": lambda: s.hf_eager(**inputs),
        "HF sdpa": lambda: s.hf_sdpa(**inputs),
        "HF sdpa + output_hidden_states": lambda: s.hf_sdpa(**inputs, output_hidden_states=True),
        "TL bridge run_with_cache(resid_post) (before)": lambda: s.bridge.run_with_cache(
            batch, names_filter=resid
        ),
        "vlm_lens run_with_cache(resid_post) (SDPA)": lambda: s.fast.run_with_cache(
            batch, names_filter=resid
        ),
    }
    medians = median_times(variants, args.repeats, s.sync, deadline=deadline)
    title = f"{s.describe()}; vlm_lens resid_post[0] == HF sdpa hidden_states[1]: {same}"
    print_table(title, medians, "HF sdpa")
    return {"seconds": medians, "resid_post0_equal_hf_hidden1": same}


if __name__ == "__main__":
    main()

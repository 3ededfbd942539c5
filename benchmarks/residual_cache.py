"""Residual-only cache (``resid_post`` of every layer): vlm_lens vs HF eager and SDPA.

HF variants return ``output_hidden_states``; TransformerLens' bridge (eager attention, as
before the fast path) and vlm_lens (SDPA) run ``run_with_cache`` with a residual filter.

    taskset -c 1 python benchmarks/residual_cache.py --threads 1 [--shape llava]
"""

from __future__ import annotations

import torch
from _common import build, median_times, parser, print_table

from vlm_lens import hooks


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    s = build(args)
    inputs, batch = s.inputs, s.batch
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
    medians = median_times(variants, args.repeats, s.sync)
    title = f"{s.describe()}; vlm_lens resid_post[0] == HF sdpa hidden_states[1]: {same}"
    print_table(title, medians, "HF sdpa")


if __name__ == "__main__":
    main()

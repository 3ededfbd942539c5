"""Layer-window knockout sweep: the gate knocked out in the last w layers, w = 1 .. n_layers.

`knockout_sweep` with `gate_knockout` (mask mode; the knocked-out layers run eager because their
scores are edited, the others SDPA). Naive: the clean run and every window in full
(``reuse_prefix=False``); reused: the prefix before the gate once, then only the positions from
the gate on per window. Costs in full-forward equivalents (over one vlm_lens SDPA forward).

    taskset -c 1 python benchmarks/knockout_sweep_cost.py --threads 1 --layers 32 --repeats 3
    taskset -c 1 python benchmarks/knockout_sweep_cost.py --threads 1 --layers 32 --repeats 3 \\
        --shape llava
"""

from __future__ import annotations

import numpy as np
from _common import build, median_times, parser, print_table

from vlm_lens.analysis import knockout_sweep


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--with-bridge", action="store_true", help="also time the eager bridge")
    args = p.parse_args()
    s = build(args)
    out: dict[str, object] = {}

    def sweep(model, name: str, reuse: bool):
        def run() -> None:
            out[name] = knockout_sweep(model, s.batch, reuse_prefix=reuse)

        return run

    variants = {
        "HF sdpa forward": lambda: s.hf_sdpa(**s.inputs),
        "vlm_lens forward (SDPA)": lambda: s.fast(s.batch),
        "naive sweep, vlm_lens SDPA (full runs)": sweep(s.fast, "naive", False),
        "sweep with prefix reuse, vlm_lens SDPA": sweep(s.fast, "reuse", True),
    }
    if args.with_bridge:
        variants["naive sweep, TL bridge eager (before)"] = sweep(s.bridge, "bridge", False)
    median_times({k: v for k, v in variants.items() if "forward" in k}, 1, s.sync)
    medians = median_times(variants, args.repeats, s.sync, warmup=False)
    fast, naive = out["reuse"], out["naive"]
    diff = float(np.abs(fast.clean_token_logprob - naive.clean_token_logprob).max())
    title = (
        f"{s.describe()}; {len(fast.windows)} windows; max |logprob reuse - naive| = {diff:.2e}; "
        f"top tokens equal: {bool((fast.tokens == naive.tokens).all())}"
    )
    print_table(title, medians, "vlm_lens forward (SDPA)")


if __name__ == "__main__":
    main()

"""Forward pass with every hook point idle: vlm_lens (SDPA fast path) vs HF eager and SDPA.

Also TransformerLens' bridge as vlm_lens ran it before the fast path (eager attention in every
layer, the cost of every analysis until now). Interleaved in one process; prints median ms and
ratios, and checks that vlm_lens' logits equal HF SDPA's.

    taskset -c 1 python benchmarks/forward_overhead.py --threads 1                # Chameleon
    taskset -c 1 python benchmarks/forward_overhead.py --threads 1 --shape llava  # LLaVA
    python benchmarks/forward_overhead.py --device cuda --dtype bfloat16 --hidden 4096 \\
        --layers 32 --heads 32 --vocab 65536                                       # 7B on a GPU
"""

from __future__ import annotations

from typing import Any

import torch
from _common import Setup, build, median_times, parser, print_table


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    measure(build(args))


def measure(s: Setup, deadline: float | None = None) -> dict[str, Any]:
    """Time the variants on `s` (repeats from ``s.args``); print and return the medians."""
    args, inputs, batch = s.args, s.inputs, s.batch
    with torch.no_grad():
        same = torch.equal(s.fast(batch), s.hf_sdpa(**inputs).logits)
    variants = {
        "HF eager": lambda: s.hf_eager(**inputs),
        "HF sdpa": lambda: s.hf_sdpa(**inputs),
        "TL bridge forward (eager attention, before)": lambda: s.bridge(batch),
        "vlm_lens forward, hooks idle (SDPA)": lambda: s.fast(batch),
    }
    medians = median_times(variants, args.repeats, s.sync, deadline=deadline)
    print_table(f"{s.describe()}; vlm_lens logits == HF sdpa: {same}", medians, "HF sdpa")
    return {"seconds": medians, "logits_equal_hf_sdpa": same}


if __name__ == "__main__":
    main()

"""Attention share per prompt (text after the gate -> image side): time and peak memory.

vlm_lens' `attention_share` computes only the text query rows from ``hook_rot_q``/``hook_rot_k``
while every layer runs SDPA. "before" is the previous implementation: a ``hook_pattern`` hook per
layer reducing the full ``[batch, head, pos, pos]`` pattern, which makes every layer eager. Times
are interleaved in one process; peak memory is measured per variant in a fresh process (see
`_common.peak_memory`). Also prints the largest difference between the two results.

    taskset -c 1 python benchmarks/attention_share_cost.py --threads 1 [--shape llava]
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from _common import Setup, build, child_peak, median_times, parser, peak_memory, print_table

from vlm_lens import hooks
from vlm_lens.analysis import attention_share
from vlm_lens.engine.attention_rows import query_rows
from vlm_lens.positions import after


def pattern_hook_share(model, batch) -> torch.Tensor:
    """The previous implementation's per-layer key mass via full-pattern hooks."""
    rows = query_rows(after("text", "gate"), batch.layout)
    store: dict[int, torch.Tensor] = {}

    def hook_for(layer: int):
        def fn(pattern: torch.Tensor, hook) -> None:  # noqa: ARG001
            store[layer] = torch.stack(
                [
                    pattern[b].index_select(1, i.to(pattern.device)).sum((0, 1)) / len(i)
                    for b, i in enumerate(rows)
                ]
            ).cpu()

        return fn

    n = model.cfg.n_layers
    model.run_with_hooks(
        batch, fwd_hooks=[(hooks.pattern(layer), hook_for(layer)) for layer in range(n)]
    )
    return torch.stack([store[layer] for layer in range(n)])


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    measure(build(args), argv=sys.argv[1:])


def measure(
    s: Setup, argv: list[str] | None = None, deadline: float | None = None
) -> dict[str, Any]:
    """Time the variants on `s` and measure each one's peak memory growth; print and return.

    Peak memory: with `argv` (this script's arguments) each variant runs in a fresh process
    (`_common.peak_memory`); without, in this process after the timings (`_common.child_peak`:
    exact on CUDA, where ``max_memory_allocated`` is reset per call; on the CPU RSS growth,
    which freed memory still held by the allocator can hide).
    """
    args, inputs, batch = s.args, s.inputs, s.batch
    variants = {
        "HF eager": lambda: s.hf_eager(**inputs),
        "HF sdpa": lambda: s.hf_sdpa(**inputs),
        "pattern hooks on TL bridge (eager, before)": lambda: pattern_hook_share(s.bridge, batch),
        "vlm_lens attention_share (rows, SDPA)": lambda: attention_share(s.fast, batch),
    }
    if args.child:
        print(child_peak(variants[args.child], args.device))
        return {}
    with torch.no_grad():
        new = attention_share(s.fast, batch).mass
        old = attention_share(s.bridge, batch).mass
    medians = median_times(variants, args.repeats, s.sync, deadline=deadline)
    if argv is not None:
        memory = {name: peak_memory(__file__, argv, name) for name in variants}
    else:
        memory = {name: child_peak(fn, args.device) for name, fn in variants.items()}
    print_table(
        f"{s.describe()}; max |share mass SDPA rows - eager rows| = {abs(new - old).max():.2e}",
        medians,
        "HF sdpa",
    )
    print(f"{'peak memory growth of one call':52s} {'MiB':>10s} {'x HF sdpa':>11s}")
    for name, mib in memory.items():
        print(f"{name:52s} {mib:10.1f} {mib / memory['HF sdpa']:11.2f}")
    return {
        "seconds": medians,
        "peak_memory_mib": memory,
        "max_abs_mass_diff": float(abs(new - old).max()),
    }


if __name__ == "__main__":
    main()

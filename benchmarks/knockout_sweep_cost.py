"""Layer-window knockout sweep: the gate knocked out in the last w layers, w = 1 .. n_layers.

`knockout_sweep` with `gate_knockout` (mask mode; the knocked-out layers run eager because their
scores are edited, the others SDPA). Naive: the clean run and every window in full
(``reuse_prefix=False``); reused: the prefix before the gate once, the clean suffix, then the
windows' suffixes, one per pass or stacked several per pass (each pass starting at the first
knocked-out layer). Costs in full-forward equivalents (over one vlm_lens SDPA forward).

    taskset -c 1 python benchmarks/knockout_sweep_cost.py --threads 1 --layers 32 --repeats 3
    taskset -c 1 python benchmarks/knockout_sweep_cost.py --threads 1 --layers 32 --repeats 3 \\
        --shape llava
"""

from __future__ import annotations

from typing import Any

import numpy as np
from _common import Setup, build, print_floor, sweep_parser, swept, time_sweep

from vlm_lens.analysis import KnockoutSweepResult, knockout_sweep


def agreement(fast: KnockoutSweepResult, naive: KnockoutSweepResult) -> str:
    """Largest log-prob difference and whether every top token matches."""
    diff = float(np.abs(fast.clean_token_logprob - naive.clean_token_logprob).max())
    same = bool((fast.tokens == naive.tokens).all())
    return f"max |dlogprob| {diff:.2e}, top tokens equal {same}"


def main() -> None:
    args = sweep_parser(__doc__.splitlines()[0]).parse_args()
    measure(build(args))


def measure(s: Setup, deadline: float | None = None) -> dict[str, Any]:
    """Time the sweep variants on `s` (``s.args``: repeats, ``--no-naive``, ``--sweep-layers``:
    that many window sizes, evenly spaced over 1 .. n_layers); print and return them."""
    windows = [w + 1 for w in swept(s.args)]
    out = time_sweep(
        s.args,
        s,
        lambda model, **kw: knockout_sweep(model, s.batch, windows=windows, **kw),
        agreement,
        deadline=deadline,
    )
    n_layers = int(s.fast.cfg.n_layers)
    floor = print_floor(s, [n_layers - w for w in windows], source=False)
    return {"windows": windows, **out, "exact_floor": floor}


if __name__ == "__main__":
    main()

"""The "has a gate" measurements (`vlm_lens.experiments.gate_criteria`) on the shipped organisms.

Command (writes ``benchmarks/results/organisms_gate/gate_factorial.{json,md,html}``)::

    python benchmarks/organisms_gate_criteria.py --scenes 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vlm_lens import HookedVLM
from vlm_lens.experiments.gate_criteria import measure_gate, write_factorial
from vlm_lens.world import world_split

RESULTS = Path(__file__).parent / "results" / "organisms_gate"


def main() -> None:
    """Measure both organisms on held-out one-object scenes and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["organism:native", "organism:nonnative"])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    scenes = world_split("test", args.scenes, seed=0, max_objects=1)
    records = []
    for name in args.models:
        start = time.perf_counter()
        measured = measure_gate(HookedVLM.from_pretrained(name), scenes, pairs=args.pairs)
        seconds = round(time.perf_counter() - start, 1)
        records.append({"name": name, "seed": 0, **measured.to_record(), "seconds": seconds})
    write_factorial(records, args.out)
    print((args.out / "gate_factorial.md").read_text())


if __name__ == "__main__":
    main()

"""Test helper for test_narrow_gate_parallel.py: one rank of a ``torchrun`` narrow-gate run.

``python -m torch.distributed.run --standalone --nproc-per-node 2
tests/_narrow_gate_dist_child.py OUT`` runs ``vlm-lens narrow-gate`` (`ARGS`, writing
``OUT/two.html`` and ``OUT/two.json``) and counts the loop items this rank ran, then checks
that a shared `knockout_sweep` equals one run alone, and `map_shared` directly: each rank's
share of the items, every output on every rank in order, and an error raised on rank 1 only
reaching rank 0 with its class. It prints one JSON line per rank.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vlm_lens import HookedVLM
from vlm_lens.analysis import knockout_sweep
from vlm_lens.cli import main as cli
from vlm_lens.data import distributed
from vlm_lens.errors import AnalysisSkipped
from vlm_lens.experiments import world_images

ARGS = [
    "narrow-gate",
    "--model",
    "organism:nonnative",
    "--n-images",
    "10",
    "--batch-size",
    "3",
    "--n-pairs",
    "4",
    "--k",
    "3",
    "--no-attention-view",
    "--threads",
    "1",
]


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    rank = int(os.environ["RANK"])
    asked: list[bool] = []
    owns = distributed.Ranks.owns

    def counted(self: distributed.Ranks, chunk: int) -> bool:
        asked.append(owns(self, chunk))
        return asked[-1]

    distributed.Ranks.owns = counted  # type: ignore[method-assign]
    code = cli([*ARGS, "--out", str(out / "two.html"), "--json", str(out / "two.json")])
    distributed.Ranks.owns = owns  # type: ignore[method-assign]
    line: dict[str, Any] = {"rank": rank, "cli": code, "items": [sum(asked), len(asked)]}
    ran: list[int] = []

    def square(x: int) -> int:
        ran.append(x)
        return x * x

    # knockout_sweep (not in the report): shared equals alone, on every rank
    model = HookedVLM.from_pretrained("organism:nonnative")
    images = world_images(6).images
    prompt = "<image>what colour is the shape?"
    batches = [model.prepare(images=images[i : i + 2], text=[prompt] * 2) for i in range(0, 6, 2)]
    alone = knockout_sweep(model, batches)
    with distributed.sharded():
        shared = knockout_sweep(model, batches)
    line["sweep_equal"] = all(
        np.array_equal(getattr(alone, f), getattr(shared, f))
        for f in ("clean_tokens", "tokens", "clean_token_logprob", "clean_logprob")
    )

    with distributed.sharded() as ranks:
        line["world"] = ranks.world_size
        line["squares"] = distributed.map_shared(square, list(range(5)))
        line["ran"] = ran

        def fail_on_rank_1(x: int) -> int:
            if rank == 1:
                raise AnalysisSkipped("nothing to measure here")
            return x

        try:
            distributed.map_shared(fail_on_rank_1, [0, 1])
        except AnalysisSkipped as error:
            line["raised"] = [type(error).__name__, str(error)]
    line["after"] = distributed.shared_ranks().world_size
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

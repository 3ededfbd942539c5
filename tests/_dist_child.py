"""Test helper for test_data_parallel.py: one rank of a ``torchrun`` dataset run.

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_dist_child.py OUT``
runs `run_dataset` on the dataset of `_runner_child.setup` (the same run as the tests' own)
and prints one JSON line per rank: its rank, the chunks it wrote, whether the store is complete.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch.distributed as dist
from _runner_child import RUN_KWARGS, setup

from vlm_lens.data.runner import run_dataset


def main(argv: list[str]) -> int:
    model, examples, probes = setup()
    written: list[int] = []

    def record(chunk: int, store: Any) -> None:
        written.append(chunk)

    store = run_dataset(model, examples, probes, argv[0], on_chunk_written=record, **RUN_KWARGS)
    line = {"rank": int(os.environ["RANK"]), "written": written, "complete": store.complete}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

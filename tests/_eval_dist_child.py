"""Test helper for test_eval_parallel.py: one rank of a ``torchrun`` evaluation.

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_eval_dist_child.py
DATA OUT STOP`` evaluates `ARGS` on ``organism:nonnative``: first through `evaluate`, with
rank 1 interrupted after its STOP-th row; then resumed through ``vlm-lens evaluate`` (rank 0
writes ``table.json``); then once more through `evaluate` (everything done: it only reads and
scores) and once with ``out=None`` (the rows exchanged in memory). It prints one JSON line
per rank: the rows of each log before and after the resume, what the first call raised, and
the tables and predictions of the last two calls.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vlm_lens import HookedVLM
from vlm_lens.cli import main as cli
from vlm_lens.evaluate import TASKS, evaluate

TASK, MODEL, CONDITIONS, LIMIT, BATCH = "vqav2", "organism:nonnative", "baseline,gate,random", 8, 2


def options() -> dict[str, Any]:
    """`evaluate`'s keywords of the run (what the CLI below passes too)."""
    return {"model_name": MODEL, "batch_size": BATCH, "progress": False}


def lines(out: Path) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in sorted(out.glob("*.jsonl"))}


def main(argv: list[str]) -> int:
    data, out, stop = argv[0], Path(argv[1]), int(argv[2])
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    model = HookedVLM.from_pretrained(MODEL)
    items = TASKS[TASK].read(data, limit=LIMIT, seed=42)
    written: list[Any] = []

    def interrupt(row: Any) -> None:
        written.append(row)
        if rank == 1 and len(written) == stop:
            raise KeyboardInterrupt

    raised = None
    try:
        evaluate(model, TASK, items, CONDITIONS, out=out, on_row=interrupt, **options())
    except BaseException as error:  # noqa: BLE001 - reported to the test
        raised = type(error).__name__
    dist.barrier()
    before = lines(out)
    dist.barrier()
    args = ["evaluate", TASK, "--data", data, "--model", MODEL, "--limit", str(LIMIT)]
    args += ["--conditions", CONDITIONS, "--batch-size", str(BATCH), "--out", str(out), "-q"]
    code = cli(args)
    dist.barrier()
    after = lines(out)
    again = evaluate(model, TASK, items, CONDITIONS, out=out, **options())
    memory = evaluate(model, TASK, items, CONDITIONS, out=None, **options())
    line = {
        "rank": rank,
        "raised": raised,
        "first": len(written),
        "cli": code,
        "before": before,
        "after": after,
        "table": again.table(),
        "memory_table": memory.table(),
        "predictions": again.predictions.to_dict("records"),
        "memory_predictions": memory.predictions.to_dict("records"),
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

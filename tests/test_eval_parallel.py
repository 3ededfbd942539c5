"""Data parallel `evaluate`: two ``torchrun`` processes on CPU (gloo) give the table of one.

One launch checks the sharding (batch ``b`` to rank ``b % 2``, each rank's rows in its own
log), resume per rank (rank 1 interrupted mid-run; the rerun, through ``vlm-lens evaluate``,
computes only rank 1's missing rows) and that the table, the per-draw scores and the
predictions of every rank, from the logs and from memory (``out=None``), equal an
uninterrupted single-process run's.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from _eval_dist_child import BATCH, CONDITIONS, LIMIT, MODEL, TASK, options
from _torchrun import launch, rank_lines

from vlm_lens import HookedVLM
from vlm_lens.data import distributed
from vlm_lens.evaluate import TASKS, evaluate
from vlm_lens.evaluate.fixtures import write_vqav2
from vlm_lens.evaluate.prompts import item_prompt
from vlm_lens.evaluate.runner import _batches

CHILD = Path(__file__).parent / "_eval_dist_child.py"
STOP = 3  # rank 1's rows before its interruption


def _launch(*args: str) -> subprocess.CompletedProcess[str]:
    return launch(CHILD, *args)


def test_two_processes_resume_per_rank_and_equal_one(tmp_path: Path) -> None:
    data = write_vqav2(tmp_path / "vqa", n_images=4, max_objects=1)
    out = tmp_path / "two"
    proc = _launch(str(data), str(out), str(STOP))
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_rank = rank_lines(proc)
    assert set(by_rank) == {0, 1}

    torch.set_num_threads(1)
    model = HookedVLM.from_pretrained(MODEL)
    items = TASKS[TASK].read(data, limit=LIMIT, seed=42)
    one = evaluate(model, TASK, items, CONDITIONS, out=tmp_path / "one", **options())
    runs = len(one.predictions) // len(items)
    assert runs == 1 + 1 + 5 and len(items) == LIMIT

    # sharding: each rank's log holds the rows of its batches, b % 2 == rank, and nothing else
    batches = _batches(model, [item_prompt(model, MODEL, TASKS[TASK], i) for i in items], BATCH)
    assert len(batches) >= 3
    header = (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()[0]
    for rank in (0, 1):
        want = {items[i].id for b, c in enumerate(batches) if b % 2 == rank for i in c}
        log = (out / f"predictions.rank{rank}.jsonl").read_text().splitlines()
        assert json.loads(log[0]) == json.loads(header)  # the same config and fingerprint
        rows = [json.loads(x) for x in log[1:]]
        assert {r["id"] for r in rows} == want and len(rows) == len(want) * runs
    assert not (out / "predictions.jsonl").exists()

    # resume per rank: rank 1 stopped after STOP rows (rank 0 was told, and finished its own);
    # the rerun wrote only rank 1's missing rows
    r0, r1 = by_rank[0], by_rank[1]
    assert (r1["raised"], r0["raised"]) == ("KeyboardInterrupt", "RuntimeError")
    assert r1["first"] == STOP and r0["cli"] == r1["cli"] == 0
    name0, name1 = "predictions.rank0.jsonl", "predictions.rank1.jsonl"
    assert r0["before"][name1] == 1 + STOP and r0["after"][name0] == r0["before"][name0]
    assert r0["after"][name1] > r0["before"][name1]

    # the table: every rank, from the logs, from memory and the CLI's table.json
    assert len(one.draws["random"]) == 5  # the per-draw scores are compared too
    cli_table = json.loads((out / "table.json").read_text())
    expected = json.loads(json.dumps(one.table()))
    assert cli_table == expected
    frame = one.predictions.to_dict("records")
    for line in (r0, r1):
        assert line["table"] == line["memory_table"] == expected
        assert line["predictions"] == line["memory_predictions"] == frame

    # one process resumes the two ranks' logs: nothing left to compute, the same table
    computed: list[object] = []
    alone = evaluate(model, TASK, items, CONDITIONS, out=out, on_row=computed.append, **options())
    assert computed == [] and alone.table() == one.table()


def test_shard_false_ignores_the_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call made on one rank only: with shard=False it never touches torch.distributed
    (the variables below would make it wait for a second process) and runs every batch."""
    data = write_vqav2(tmp_path / "vqa", n_images=1, max_objects=1)
    model = HookedVLM.from_pretrained(MODEL)
    items = TASKS[TASK].read(data, limit=3, seed=42)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed.dist, "init_process_group", _never)
    result = evaluate(model, TASK, items, "baseline", out=tmp_path, shard=False, **options())
    assert len(result.predictions) == 3 and (tmp_path / "predictions.jsonl").exists()


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("shard=False must not join a process group")

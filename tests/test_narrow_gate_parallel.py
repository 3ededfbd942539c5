"""``vlm-lens narrow-gate`` under ``torchrun``: two CPU processes (gloo) share every analysis's
batches and rank 0 writes the report of one process.

The launch runs `_narrow_gate_dist_child.ARGS`; the same command in this process gives the
reference. Every number of the JSON report is equal (timings, the creation time and the
command line aside); `map_shared` gives each rank its own items and every rank all outputs,
and an analysis skipped on one rank is skipped (same error class) on every rank.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _narrow_gate_dist_child import ARGS
from _torchrun import launch, rank_lines

from vlm_lens.cli import main
from vlm_lens.data import distributed

CHILD = Path(__file__).parent / "_narrow_gate_dist_child.py"


def _numbers(report: Any) -> Any:
    """The report without what differs between two runs of one command (timings, when, how)."""
    if isinstance(report, dict):
        return {
            k: _numbers(v)
            for k, v in report.items()
            if k not in ("seconds", "created", "command", "device")
        }
    if isinstance(report, list):
        return [_numbers(v) for v in report]
    return report


def test_two_processes_write_the_report_of_one(tmp_path: Path) -> None:
    proc = launch(CHILD, str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = rank_lines(proc)
    assert set(lines) == {0, 1} and all(x["cli"] == 0 for x in lines.values())
    assert (tmp_path / "two.html").stat().st_size > 0
    # the analyses' loops were shared: each rank ran about half of every loop's items
    (mine0, total0), (mine1, total1) = lines[0]["items"], lines[1]["items"]
    assert total0 == total1 > 8 and mine0 + mine1 == total0 and min(mine0, mine1) >= total0 // 3

    # map_shared: rank r ran items i % 2 == r; every rank has every output, in order
    for rank, line in lines.items():
        assert line["sweep_equal"] is True  # knockout_sweep shared == alone
        assert line["world"] == 2 and line["after"] == 1
        assert line["squares"] == [x * x for x in range(5)]
        assert line["ran"] == [x for x in range(5) if x % 2 == rank]
        kind, message = line["raised"]
        assert kind == "AnalysisSkipped" and "nothing to measure here" in message

    # the report: equal to one process's, number for number
    assert (
        main(
            [*ARGS, "--out", str(tmp_path / "one.html"), "--json", str(tmp_path / "one.json"), "-q"]
        )
        == 0
    )
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert one["models"] and one["models"][0]["patching"] is not None
    assert _numbers(two) == _numbers(one)


def test_outside_a_launch_sharded_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain process: `sharded` joins no process group and `map_shared` is a loop."""
    monkeypatch.setattr(distributed.dist, "init_process_group", _never)
    with distributed.sharded() as ranks:
        assert ranks.world_size == 1 and distributed.shared_ranks().world_size == 1
        assert distributed.map_shared(str, [1, 2]) == ["1", "2"]


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("a single process must not join a process group")

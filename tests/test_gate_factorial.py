"""The gate-factorial driver end to end, with tiny settings: plan, train, skip, measure, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_lens.experiments import gate_factorial as gf


def test_plan_cells_flip_one_factor_each() -> None:
    corner, *flips = gf.stage_cells(1)
    assert corner.factors == gf.CORNER
    for cell in flips:
        changed = {f for f in gf.CORNER if cell.factors[f] != gf.CORNER[f]}
        assert len(changed) == 1
        (f,) = changed
        assert cell.factors[f] == gf.FLIPS[f]
    stage2 = {
        tuple(c.factors[f] for f in ("objective", "init", "tokenizer")) for c in gf.stage_cells(2)
    }
    assert len(stage2) == 8


def test_driver_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    cells = gf.stage_cells(1)[:2]  # the corner and one flip keep the test short
    monkeypatch.setattr(gf, "stage_cells", lambda stage: cells)
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = ["--seeds", "0", "--runs", str(runs), "--results", str(results), "--tiny"]
    gf.main([*argv, "--plan-only"])
    assert capsys.readouterr().out.count("not started") == 2
    gf.main([*argv, "--measure-scenes", "4", "--set", "train_scenes=6", "--jobs", "0"])
    records = json.loads((results / "gate_factorial.json").read_text())
    assert [r["name"] for r in records] == ["corner", "objective-text"]
    assert records[1]["factors"]["objective"] == "text" and records[0]["seed"] == 0
    assert (results / "gate_factorial.md").exists()
    training = json.loads((runs / "corner" / "seed-0" / "training.json").read_text())
    assert training["settings"]["objective"] == "image+text"
    assert training["settings"]["train_scenes"] == 6
    capsys.readouterr()
    gf.main([*argv, "--plan-only"])
    assert capsys.readouterr().out.count(": done") == 2
    gf.main(
        [*argv, "--measure-scenes", "4", "--jobs", "0"]
    )  # finished runs are skipped: nothing starts
    assert "start " not in capsys.readouterr().out


def test_subprocess_command_parses_to_the_cell_settings(tmp_path: Path) -> None:
    from vlm_lens.zoo.command import parse_settings
    from vlm_lens.zoo.native import Settings

    cell = gf.stage_cells(1)[3]
    words = gf.train_command(cell, 1, tmp_path, {"lm_steps": 3})
    assert words[1:3] == ["-m", "vlm_lens.zoo.native"]
    settings, out = parse_settings(Settings, "prog", "", words[3:])
    assert out == tmp_path and settings.seed == 1 and settings.lm_steps == 3
    assert {f: getattr(settings, f) for f in cell.factors} == dict(cell.factors)

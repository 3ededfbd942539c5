"""The gate factorial of issue 15: train a plan of native organisms, measure each one's gate.

    python -m vlm_lens.experiments.gate_factorial --stage 1 --seeds 0 1 --runs runs/gate \\
        [--jobs 2] [--results benchmarks/results] [--plan-only] [--tiny | --set lm_steps=3 ...]

Stage 1 is the Chameleon-like corner (`CORNER`: image+text output, from scratch, pixel-only VQ,
relational task, 8 layers) and its five single-factor flips (`FLIPS`); stage 2 is the 2x2x2 of
objective x init x tokenizer (relational, 8 layers). Each cell and seed trains in its own
subprocess (``python -m vlm_lens.zoo.native --out RUNS/CELL/seed-S ...``, one thread,
``--jobs`` at a time); unfinished runs resume from their checkpoint, finished ones (a
``training.json``) are skipped. Every finished organism is then measured with
`vlm_lens.experiments.gate_criteria.measure_gate` (cached in its ``gate.json``) and the records
go to `vlm_lens.experiments.factorial_report.write_factorial` (``gate_factorial.json``, ``.md``,
``.html`` in ``--results``).

Example:
    >>> [cell.name for cell in stage_cells(1)]
    ['corner', 'objective-text', 'init-text', 'tokenizer-semantic', 'task-local', 'layers-4']
    >>> len(stage_cells(2))
    8
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORNER: dict[str, Any] = {
    "objective": "image+text",
    "init": "scratch",
    "tokenizer": "pixel",
    "task": "relational",
    "layers": 8,
}
"""The Chameleon-like corner of stage 1."""

FLIPS: dict[str, Any] = {
    "objective": "text",
    "init": "text",
    "tokenizer": "semantic",
    "task": "local",
    "layers": 4,
}
"""The other level of each factor (stage 1 flips one at a time)."""

TINY: dict[str, Any] = {
    "hidden": 32,
    "heads": 2,
    "ffn": 64,
    "vq_latent": 32,
    "vq_dim": 8,
    "vq_steps": 2,
    "vq_batch": 4,
    "lm_steps": 2,
    "lm_scenes": 2,
    "lm_draws": 1,
    "text_steps": 2,
    "train_scenes": 8,
    "eval_scenes": 2,
    "monitor_scenes": 2,
    "monitor_every": 1000,
}
"""``--tiny``: settings for a seconds-long end-to-end check of the driver (not an organism)."""


@dataclass(frozen=True)
class Cell:
    """One cell of a plan: a name (its folder) and its factor levels."""

    name: str
    factors: Mapping[str, Any]

    def folder(self, runs: Path, seed: int) -> Path:
        """The run folder of `seed`: ``runs/NAME/seed-S``."""
        return runs / self.name / f"seed-{seed}"


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def stage_cells(stage: int) -> list[Cell]:
    """The cells of `stage` (1: the corner and its single-factor flips; 2: objective x init x
    tokenizer at the corner's task and depth)."""
    if stage == 1:
        cells = [Cell("corner", dict(CORNER))]
        cells += [Cell(f"{f}-{level}", {**CORNER, f: level}) for f, level in FLIPS.items()]
        return cells
    if stage == 2:
        names = ("objective", "init", "tokenizer")
        grid = itertools.product(*[(CORNER[f], FLIPS[f]) for f in names])
        return [
            Cell("_".join(f"{f}-{v}" for f, v in zip(names, levels, strict=True)), factors)
            for levels in grid
            for factors in [{**CORNER, **dict(zip(names, levels, strict=True))}]
        ]
    raise ValueError(f"unknown stage {stage}; stages are 1 and 2 (stage 3 is not automated)")


def run_state(folder: Path) -> str:
    """``"done"``, ``"partial at PHASE step N"`` (from the checkpoint) or ``"not started"``."""
    from vlm_lens.zoo.native.checkpointing import read_checkpoint

    if (folder / "training.json").exists():
        return "done"
    state = read_checkpoint(folder)
    if state is None:
        return "not started"
    if state["phase"] is not None:
        return f"partial at {state['phase']} step {state['step']}"
    return f"partial after {list(state['finished'])[-1]}"


def train_command(cell: Cell, seed: int, folder: Path, overrides: Mapping[str, Any]) -> list[str]:
    """The training subprocess' command line."""
    words = [sys.executable, "-m", "vlm_lens.zoo.native", "--out", str(folder), "--seed", str(seed)]
    for name, value in {**cell.factors, **overrides}.items():
        words += [f"--{name.replace('_', '-')}", str(value)]
    return words


def train_all(
    jobs: Sequence[tuple[Cell, int, Path]], overrides: Mapping[str, Any], parallel: int
) -> dict[Path, int]:
    """Train (or resume) every job not done, `parallel` subprocesses at a time (one thread
    each; output in the run folder's ``train.log``; 0: one after another in this process).
    Returns each started run's exit status."""
    todo = [job for job in jobs if run_state(job[2]) != "done"]
    if parallel == 0:
        return {folder: _train_here(cell, seed, folder, overrides) for cell, seed, folder in todo}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: list[tuple[Path, subprocess.Popen[bytes], Any]] = []
    status: dict[Path, int] = {}
    while todo or running:
        while todo and len(running) < max(1, parallel):
            cell, seed, folder = todo.pop(0)
            folder.mkdir(parents=True, exist_ok=True)
            log = (folder / "train.log").open("ab")
            command = train_command(cell, seed, folder, overrides)
            _say(f"start {folder}: {' '.join(command[1:])}")
            running.append(
                (folder, subprocess.Popen(command, stdout=log, stderr=log, env=env), log)
            )
        for item in list(running):
            folder, process, log = item
            if process.poll() is not None:
                log.close()
                status[folder] = process.returncode
                _say(f"{folder}: exit {process.returncode} ({run_state(folder)})")
                running.remove(item)
        time.sleep(0.5)
    return status


def _train_here(cell: Cell, seed: int, folder: Path, overrides: Mapping[str, Any]) -> int:
    """Train one run in this process (``--jobs 0``), as the subprocess would."""
    from vlm_lens.zoo.native import Settings, run

    _say(f"start {folder} (in process)")
    run(Settings(seed=seed, **{**cell.factors, **overrides}), folder)
    return 0


def measure(
    cell: Cell, seed: int, folder: Path, scenes: int, world_seed: int = 0
) -> dict[str, Any]:
    """The gate record of a finished organism (cached in its ``gate.json``): the cell's name,
    factor levels, seed and every `measure_gate` measurement on `scenes` test scenes."""
    cache = folder / "gate.json"
    if cache.exists():
        record: dict[str, Any] = json.loads(cache.read_text())
        if record.get("scenes") == scenes:
            return record
    from vlm_lens.experiments.gate_criteria import measure_gate
    from vlm_lens.model import HookedVLM
    from vlm_lens.world import task_split

    model = HookedVLM.from_pretrained(folder)
    test = task_split(str(cell.factors["task"]), "test", scenes, world_seed)
    measured = measure_gate(model, test, seed=seed)
    record = {
        "name": cell.name,
        "factors": dict(cell.factors),
        "seed": seed,
        "folder": str(folder),
        "scenes": scenes,
        **measured.to_record(),
    }
    cache.write_text(json.dumps(record, indent=2) + "\n")
    return record


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["lm_steps=3", ...]`` -> ``{"lm_steps": 3, ...}``, typed by `Settings`' fields.

    Example:
        >>> parse_overrides(["lm_steps=3", "lm_lr=0.01"])
        {'lm_steps': 3, 'lm_lr': 0.01}
    """
    from dataclasses import asdict

    from vlm_lens.zoo.native.settings import Settings

    defaults = asdict(Settings())
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in defaults:
            raise ValueError(f"--set takes FIELD=VALUE with a field of Settings; got {pair!r}")
        out[name] = type(defaults[name])(value)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m vlm_lens.experiments.gate_factorial``."""
    parser = argparse.ArgumentParser(prog="python -m vlm_lens.experiments.gate_factorial")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--runs", type=Path, required=True, help="folder of the run folders")
    parser.add_argument(
        "--jobs", type=int, default=2, help="training subprocesses at a time (0: in this process)"
    )
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--measure-scenes", type=int, default=200, help="test scenes per gate")
    parser.add_argument("--plan-only", action="store_true", help="print the cells and stop")
    parser.add_argument("--tiny", action="store_true", help="tiny settings (a driver check)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)
    overrides = {**(TINY if args.tiny else {}), **parse_overrides(args.set)}
    jobs = [
        (cell, seed, cell.folder(args.runs, seed))
        for cell in stage_cells(args.stage)
        for seed in args.seeds
    ]
    for cell, seed, folder in jobs:
        _say(f"{cell.name:40s} seed {seed}: {run_state(folder)}  ({folder})")
    if args.plan_only:
        return
    status = train_all(jobs, overrides, args.jobs)
    failed = {str(f): s for f, s in status.items() if s != 0}
    records = [
        measure(cell, seed, folder, args.measure_scenes)
        for cell, seed, folder in jobs
        if run_state(folder) == "done"
    ]
    if records:
        from vlm_lens.experiments.factorial_report import write_factorial

        write_factorial(records, args.results)
        _say(f"wrote {len(records)} records to {args.results}/gate_factorial.*")
    if failed:
        raise SystemExit(f"training failed (exit status; see each train.log): {failed}")


if __name__ == "__main__":
    main()

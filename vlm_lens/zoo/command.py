"""What the two training commands share: options from a settings dataclass, the command line
that re-creates a folder, CPU/wall clocks per phase and the closing summary.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Recipe:
    ...     seed: int = 0
    ...     steps: int = 100
    >>> argv = ["--out", "w", "--steps", "5"]
    >>> recipe, out = parse_settings(Recipe, "python -m demo", "Train.", argv)
    >>> recipe, out
    (Recipe(seed=0, steps=5), PosixPath('w'))
    >>> command_line("python -m demo", recipe, out)
    'python -m demo --out w --seed 0 --steps 5'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

SettingsT = TypeVar("SettingsT")


def parse_settings(
    settings_class: type[SettingsT], prog: str, description: str, argv: Sequence[str] | None
) -> tuple[SettingsT, Path]:
    """Parse ``--out`` and one option per field of `settings_class` (``lm_steps`` ->
    ``--lm-steps``), each defaulting to the field's default."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    for name, value in asdict(settings_class()).items():  # type: ignore[call-overload]
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    return settings_class(**args), out


def command_line(prog: str, settings: Any, out: Path) -> str:
    """The command that re-creates `out` with `settings`: ``--out``, ``--seed`` and every option
    that differs from its default."""
    words = [prog, f"--out {out}", f"--seed {settings.seed}"]
    defaults = asdict(type(settings)())
    for name, value in asdict(settings).items():
        if name != "seed" and value != defaults[name]:
            words.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(words)


class Clock:
    """CPU and wall seconds since the last lap."""

    def __init__(self) -> None:
        self.cpu = time.process_time()
        self.wall = time.perf_counter()

    def lap(self) -> dict[str, float]:
        """``{"cpu_seconds", "wall_seconds"}`` since the last lap (or the start)."""
        cpu, wall = time.process_time(), time.perf_counter()
        out = {"cpu_seconds": round(cpu - self.cpu, 1), "wall_seconds": round(wall - self.wall, 1)}
        self.cpu, self.wall = cpu, wall
        return out


def finish_record(
    record: dict[str, Any],
    out: Path,
    evaluate: Callable[[], dict[str, Any]],
    clock: Clock,
    eval_scenes: int,
    scenes: str = "single-object",
) -> dict[str, Any]:
    """Add the total CPU time of ``record["phases"]``, the folder's file sizes and the held-out
    evaluation (`evaluate` of the saved folder, timed) to `record`; write ``training.json``."""
    record["training_cpu_seconds"] = round(
        sum(p["cpu_seconds"] for p in record["phases"].values()), 1
    )
    record["files"] = {
        p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.name != "training.json"
    }
    record["folder_bytes"] = sum(record["files"].values())
    record["test"] = evaluate()
    record["test"].update(clock.lap())
    record["test"]["scenes"] = f"test split, indices 0-{eval_scenes - 1}, {scenes}"
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def print_summary(record: Mapping[str, Any], out: Path) -> None:
    """Write the held-out accuracy per question kind of a training record to stdout."""
    test = record["test"]
    lines = [f"{kind}: {acc:.3f} (n={test['n'][kind]})" for kind, acc in test["accuracy"].items()]
    sys.stdout.write(f"wrote {out}; held-out accuracy:\n  " + "\n  ".join(lines) + "\n")


def save_checkpoint(model: Any, processor: Any, out: Path) -> None:
    """Write the checkpoint folder (safetensors weights, config, processor, tokenizer), with
    the tokenizer's special ids in the generation config."""
    tokenizer = processor.tokenizer
    model.config.architectures = [type(model).__name__]
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def held_out_accuracy(
    out: Path, scenes: Sequence[Any], device: str | None = None
) -> dict[str, Any]:
    """Held-out accuracy per question kind of the saved folder, loaded back with
    `HookedVLM.from_pretrained` (`vlm_lens.zoo.tasks.answer_accuracy`) on `device` (default
    CPU)."""
    from vlm_lens.model import HookedVLM
    from vlm_lens.zoo import tasks

    model = HookedVLM.from_pretrained(out, device=device)
    result = tasks.answer_accuracy(model, scenes, progress=True)
    record: dict[str, Any] = {
        "accuracy": result.accuracy,
        "n": result.counts,
        "overall": result.overall,
    }
    if result.overall is None:
        record["undefined"] = "no held-out question was asked (the scenes hold no questions)"
    return record

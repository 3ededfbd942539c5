"""`EvaluationResult`: one task on one model under every condition, and its table files.

``table.json`` is ``{"task", "model", "metric", "n", "scores": {condition: value}}`` plus
``"draws"`` (condition -> the score of each draw, for conditions with several) and
``"conditions"`` (condition -> what it does); ``table.md`` is the same as a Markdown table.

Example:
    >>> r = EvaluationResult("vqav2", "m", "vqa_accuracy", 2, {"baseline": 1.0, "gate": 0.5})
    >>> r.table()["scores"]
    {'baseline': 1.0, 'gate': 0.5}
    >>> print(r.markdown().splitlines()[2])
    | m | vqav2 | vqa_accuracy | 2 | 1.000 | 0.500 |
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vlm_lens.analysis.persist import register_result
from vlm_lens.errors import VLMInputError

__all__ = ["EvaluationResult", "load_tables", "tables_markdown"]


@register_result
@dataclass(frozen=True)
class EvaluationResult:
    """Scores of one task under each condition.

    Attributes:
        task: task name.
        model: model name.
        metric: ``"vqa_accuracy"``, ``"cider"`` or ``"chi_out"``.
        n: number of items.
        scores: condition -> score (the mean over draws for conditions with several).
        draws: condition -> score of each draw (conditions with several draws only).
        descriptions: condition -> what it does.
        predictions: one row per (item, run): ``id, condition, draw, prediction``.
        meta: what produced the scores: ``model`` (`vlm_lens.analysis.provenance.model_meta`)
            and ``settings`` (task, conditions, seed, a digest of the items and prompts...);
            `vlm_lens.analysis.save_result` keeps it.
    """

    task: str
    model: str
    metric: str
    n: int
    scores: dict[str, float]
    draws: dict[str, list[float]] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    predictions: pd.DataFrame | None = field(default=None, compare=False, repr=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def table(self) -> dict[str, Any]:
        """The ``table.json`` dict."""
        out: dict[str, Any] = {
            "task": self.task,
            "model": self.model,
            "metric": self.metric,
            "n": self.n,
            "scores": {k: _number(v) for k, v in self.scores.items()},
        }
        if self.draws:
            out["draws"] = {k: [_number(x) for x in v] for k, v in self.draws.items()}
        if self.descriptions:
            out["conditions"] = dict(self.descriptions)
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row per condition: ``task, model, metric, n, condition, score, draws``."""
        return pd.DataFrame(
            [
                {
                    "task": self.task,
                    "model": self.model,
                    "metric": self.metric,
                    "n": self.n,
                    "condition": c,
                    "score": v,
                    "draws": len(self.draws.get(c, [v])),
                }
                for c, v in self.scores.items()
            ]
        )

    def markdown(self) -> str:
        """The table as Markdown (one row: model, task, metric, n, one column per condition)."""
        return tables_markdown([self.table()])

    def write(self, folder: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``table.json`` and ``table.md`` into `folder`; returns their paths."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out / "table.json", out / "table.md"
        json_path.write_text(json.dumps(self.table(), indent=1) + "\n", encoding="utf-8")
        md_path.write_text(self.markdown() + "\n", encoding="utf-8")
        return json_path, md_path


def _number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def tables_markdown(tables: Sequence[Mapping[str, Any]]) -> str:
    """Several ``table.json`` dicts as one Markdown table (columns: the union of conditions,
    in first-seen order; ``-`` where a table lacks one).

    Example:
        >>> print(tables_markdown([{"task": "t", "model": "m", "metric": "x", "n": 1,
        ...                         "scores": {"baseline": None}}]).splitlines()[2])
        | m | t | x | 1 | n/a |
    """
    conditions: list[str] = []
    for table in tables:
        conditions += [c for c in table["scores"] if c not in conditions]
    head = ["model", "task", "metric", "n", *conditions]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in tables:
        cells = [str(t["model"]), str(t["task"]), str(t["metric"]), str(t["n"])]
        for c in conditions:
            if c not in t["scores"]:
                cells.append("-")
            else:
                v = t["scores"][c]
                cells.append("n/a" if v is None else f"{v:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_tables(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every ``table.json`` under `path` (the file itself, a folder with one, or a folder of
    run folders), sorted by model then task.

    Raises:
        VLMInputError: if there is none, or one is not a table.
    """
    root = Path(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(root.rglob("table.json"))
    else:
        raise VLMInputError(
            f"evaluation results {root} do not exist; pass the --out folder of "
            "vlm-lens evaluate (or its table.json)"
        )
    if not files:
        raise VLMInputError(f"no table.json under {root}; run vlm-lens evaluate --out {root}")
    tables = []
    for file in files:
        try:
            table = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as error:
            raise VLMInputError(f"{file} is not JSON ({error})") from None
        keys = set(table) if isinstance(table, dict) else set()
        missing = {"task", "model", "metric", "n", "scores"} - keys
        if missing or not isinstance(table["scores"], dict):
            raise VLMInputError(
                f"{file} is not an evaluation table (missing {sorted(missing)}); it must come "
                "from vlm-lens evaluate"
            )
        tables.append(table)
    return sorted(tables, key=lambda t: (str(t["model"]), str(t["task"])))

"""The factorial report: the gate records of many organisms as json, a markdown table and a figure.

A record is `GateMeasurement.to_record()` (`vlm_lens.experiments.gate_criteria`) plus the
organism's factor levels and seed, added by the driver: either a ``"factors"`` dict
(``{"objective": "image+text", ...}``) or the factor names of `FACTORS` as top-level keys, and
``"seed"``; an optional ``"name"`` labels the row.

Example:
    >>> fig = write_factorial(records, Path("benchmarks/results"))  # doctest: +SKIP
    >>> sorted(p.name for p in Path("benchmarks/results").glob("gate_factorial.*"))
    ... # doctest: +SKIP
    ['gate_factorial.html', 'gate_factorial.json', 'gate_factorial.md']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from vlm_lens.errors import VLMInputError

FACTORS: tuple[str, ...] = ("objective", "init", "tokenizer", "task", "layers")
"""The factors of issue 15, in table order (a record's other ``"factors"`` follow)."""

DROPS: tuple[str, ...] = (
    "gate",
    "image->text",
    "image->text, layer 0",
    "image->text, layers 1+",
    "random 10 image tokens",
)
"""Knockout drops shown in the table, in order."""


def factor_levels(record: dict[str, Any]) -> dict[str, Any]:
    """The factor levels of a record: its ``"factors"`` dict, else its top-level `FACTORS` keys.

    Example:
        >>> factor_levels({"factors": {"layers": 8}}), factor_levels({"task": "local"})
        ({'layers': 8}, {'task': 'local'})
    """
    if isinstance(record.get("factors"), dict):
        return dict(record["factors"])
    return {f: record[f] for f in FACTORS if f in record}


def write_factorial(records: Sequence[dict[str, Any]], folder: Path) -> go.Figure:
    """Write ``gate_factorial.json`` (the records as given), ``gate_factorial.md`` (one row per
    organism, then the has-gate rate and mean gate-knockout drop per level of each factor) and
    ``gate_factorial.html`` (the figure) into `folder`.

    Args:
        records: one per organism (see the module docstring).
        folder: where to write (created if missing).

    Returns:
        The figure: gate-knockout drop against image→text drop, one point per organism, coloured
        by the levels of the factor picked in its menu.

    Raises:
        VLMInputError: for no records, or a record without the measurement keys.
    """
    if not records:
        raise VLMInputError(
            "write_factorial needs at least one record (measure_gate(...).to_record())"
        )
    for i, r in enumerate(records):
        missing = [k for k in ("drop", "has_gate", "baseline_accuracy") if k not in r]
        if missing:
            raise VLMInputError(
                f"record {i} lacks {missing}; pass GateMeasurement.to_record() plus factor levels"
            )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gate_factorial.json").write_text(json.dumps(list(records), indent=1))
    (folder / "gate_factorial.md").write_text(to_markdown(records))
    fig = factorial_figure(records)
    fig.write_html(folder / "gate_factorial.html", include_plotlyjs="cdn")
    return fig


def _factor_names(records: Sequence[dict[str, Any]]) -> list[str]:
    names = [f for f in FACTORS if any(f in factor_levels(r) for r in records)]
    for r in records:
        names += [f for f in factor_levels(r) if f not in names]
    return names


def _num(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _label(record: dict[str, Any], index: int) -> str:
    return str(record.get("name", f"organism {index}"))


def to_markdown(records: Sequence[dict[str, Any]]) -> str:
    """The table of `write_factorial` (one row per organism, then the per-factor summary).

    Example:
        >>> print(to_markdown(records).splitlines()[0])  # doctest: +SKIP
        # Why the gate forms: the factorial
    """
    factors = _factor_names(records)
    head = ["organism", *factors, "seed", "baseline acc", *(f"drop: {d}" for d in DROPS)]
    head += ["max gate share", "max flip rate", "has gate"]
    lines = [
        "# Why the gate forms: the factorial",
        "",
        "Drop = fraction of the accuracy above chance (majority-answer rate per kind) that a "
        "knockout removes, pooled over the kinds above chance. has gate = gate drop >= 0.5 and "
        "> image->text drop, gate share >= 0.2 in some layer, flip rate >= 0.5 in some layer.",
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    for i, r in enumerate(records):
        levels = factor_levels(r)
        cells = [_label(r, i), *(str(levels.get(f, "")) for f in factors), str(r.get("seed", ""))]
        cells.append(_num(r["baseline_accuracy"]))
        cells += [_num(r["drop"].get(d)) for d in DROPS]
        cells += [_num(r.get("max_gate_share")), _num(r.get("max_flip_rate")), str(r["has_gate"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Per factor", ""]
    lines += ["| factor | level | organisms | has-gate rate | mean gate drop |"]
    lines += ["|---|---|---|---|---|"]
    for f in factors:
        names = sorted({str(factor_levels(r).get(f)) for r in records if f in factor_levels(r)})
        for level in names:
            group = [r for r in records if str(factor_levels(r).get(f)) == level]
            rate = sum(bool(r["has_gate"]) for r in group) / len(group)
            drops = [r["drop"].get("gate") for r in group if r["drop"].get("gate") is not None]
            mean = sum(drops) / len(drops) if drops else None
            n_undefined = len(group) - len(drops)
            note = f" ({n_undefined} undefined)" if n_undefined else ""
            lines.append(f"| {f} | {level} | {len(group)} | {rate:.2f} | {_num(mean)}{note} |")
    return "\n".join(lines) + "\n"


def factorial_figure(records: Sequence[dict[str, Any]]) -> go.Figure:
    """Gate-knockout drop against image→text drop, one point per organism (organisms with an
    undefined drop are left out), coloured by the levels of one factor (menu).

    Example:
        >>> factorial_figure(records).layout.xaxis.title.text  # doctest: +SKIP
        'image->text knockout drop'
    """
    factors = _factor_names(records) or ["organism"]
    points = [
        (i, r)
        for i, r in enumerate(records)
        if r["drop"].get("gate") is not None and r["drop"].get("image->text") is not None
    ]
    fig = go.Figure()
    visible_of: dict[str, list[int]] = {}
    for f in factors:
        visible_of[f] = []

        def key(r: dict[str, Any], i: int, f: str = f) -> str:
            return _label(r, i) if f == "organism" else str(factor_levels(r).get(f, "?"))

        for level in sorted({key(r, i) for i, r in points}):
            chosen = [(i, r) for i, r in points if key(r, i) == level]
            visible_of[f].append(len(fig.data))
            fig.add_trace(
                go.Scatter(
                    x=[r["drop"]["image->text"] for _, r in chosen],
                    y=[r["drop"]["gate"] for _, r in chosen],
                    mode="markers",
                    marker={
                        "size": 11,
                        "symbol": ["star" if r["has_gate"] else "circle" for _, r in chosen],
                    },
                    name=f"{f}={level}",
                    text=[f"{_label(r, i)} seed {r.get('seed', '')}" for i, r in chosen],
                    visible=f == factors[0],
                )
            )
    n = len(fig.data)
    fig.update_layout(
        updatemenus=[
            {
                "buttons": [
                    {
                        "label": f,
                        "method": "update",
                        "args": [{"visible": [k in visible_of[f] for k in range(n)]}],
                    }
                    for f in factors
                ],
                "x": 1.0,
                "y": 1.15,
            }
        ],
        title="Gate knockout vs image->text knockout (star: has a gate)",
        xaxis_title="image->text knockout drop",
        yaxis_title="gate knockout drop",
    )
    fig.add_hline(y=0.5, line_dash="dot", annotation_text="gate drop 0.5")
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line={"dash": "dash", "color": "grey"})
    return fig

"""Knockout results per condition (baseline, gate, image-to-text, random): a table and bars.

Example:
    >>> import numpy as np
    >>> from vlm_lens.analysis import KnockoutResult
    >>> res = KnockoutResult(("baseline", "gate"), np.array([1.0, 0.5]), np.array([1.0, 0.6]),
    ...                      None, "", np.zeros((2, 4), dtype=np.int64), 4)
    >>> fig = knockout_figure(res)
    >>> [t.type for t in fig.data], [t.name for t in fig.data if t.type == "bar"]
    (['table', 'bar', 'bar'], ['agreement with baseline', 'similarity to baseline'])
    >>> [t.type for t in knockout_figure(res, table=False).data]  # the report's: bars only
    ['bar', 'bar']
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from vlm_lens.analysis.knockout_effect import KnockoutResult
from vlm_lens.viz._grid import as_mapping, legend_once, model_grid

METRICS: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy", "#2ca02c"),
    "agreement": ("agreement with baseline", "#1f77b4"),
    "similarity": ("similarity to baseline", "#ff7f0e"),
}
"""Result column -> (legend name, colour)."""


def knockout_table(result: KnockoutResult) -> pd.DataFrame:
    """The table of the figure: one row per condition, the measured columns only.

    Example:
        >>> knockout_table(res).columns.tolist()  # doctest: +SKIP
        ['condition', 'accuracy', 'agreement', 'similarity', 'n_prompts']
    """
    frame = result.to_frame()
    columns = ["condition"] + [m for m in METRICS if frame[m].notna().any()] + ["n_prompts"]
    return frame[columns]


def knockout_figure(
    results: KnockoutResult | Mapping[str, KnockoutResult],
    *,
    table: bool = True,
    title: str | None = "Knockout: each condition against the baseline",
) -> go.Figure:
    """A table (top) and grouped bars (bottom) of every measured metric per condition.

    With ``table=False`` only the bars are drawn: the report shows `knockout_table` as an HTML
    table under the figure, so the numbers appear once.

    Bars show `KnockoutResult.accuracy` (when measured), `agreement` and `similarity`, in that
    order; the table holds the same numbers rounded to 3 decimals.

    Args:
        results: one result, or ``{model name: result}`` for one column per model.
        table: draw the table above the bars.
        title: the figure title.

    Returns:
        The plotly figure.

    Example:
        >>> fig = knockout_figure({"native": ko_a, "non-native": ko_b})  # doctest: +SKIP
    """
    named = as_mapping(results)
    cols = len(named)
    if table:
        fig = model_grid(
            list(named),
            rows=2,
            specs=[[{"type": "table"}] * cols, [{"type": "xy"}] * cols],
            row_heights=[0.35, 0.65],
            title=title,
            height=720,
        )
    else:
        fig = model_grid(list(named), title=title, height=440)
    bar_row = 2 if table else 1
    for col, result in enumerate(named.values(), start=1):
        if table:
            frame = knockout_table(result)
            fig.add_trace(
                go.Table(
                    header={"values": list(frame.columns), "align": "left"},
                    cells={
                        "values": [
                            frame[c].round(3).tolist() if frame[c].dtype.kind == "f" else frame[c]
                            for c in frame.columns
                        ],
                        "align": "left",
                    },
                ),
                row=1,
                col=col,
            )
        for metric, (name, colour) in METRICS.items():
            values = getattr(result, metric)
            if values is None:
                continue
            label = name if metric != "accuracy" else f"accuracy ({result.accuracy_label})"
            fig.add_trace(
                go.Bar(
                    x=list(result.conditions),
                    y=np.asarray(values, dtype=np.float64),
                    name=name,
                    marker_color=colour,
                    hovertemplate=f"{label}<br>%{{x}}: %{{y:.3f}}<extra></extra>",
                ),
                row=bar_row,
                col=col,
            )
        fig.update_xaxes(title_text="condition", row=bar_row, col=col)
    fig.update_yaxes(range=[0, 1.02], title_text="fraction", row=bar_row, col=1)
    fig.update_layout(barmode="group")
    return legend_once(fig)

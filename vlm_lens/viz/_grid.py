"""Shared plumbing of the figures: one column per model, one colour per role, one legend entry.

Every figure function takes one result or a mapping ``{model name: result}``; with a mapping it
draws one column per model (the side-by-side comparison), with the same colour for a role in
every column and each role once in the legend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import plotly.graph_objects as go
from plotly.subplots import make_subplots

R = TypeVar("R")

ROLE_COLOURS: dict[str, str] = {
    "gate": "#d62728",
    "image": "#7f7f7f",
    "image_end": "#ff7f0e",
    "image_row_end": "#2ca02c",
    "first_image_token": "#9467bd",
    "last_image_token": "#8c564b",
    "image_mean": "#7f7f7f",
    "last": "#1f77b4",
    "text": "#1f77b4",
}
"""Colour of each role (the same word as in the layout and the result columns)."""

PALETTE: tuple[str, ...] = (
    "#17becf",
    "#bcbd22",
    "#e377c2",
    "#1f77b4",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
)
"""Colours of names that `ROLE_COLOURS` lacks, in order of first use."""


def colour_of(name: str, seen: dict[str, str]) -> str:
    """The colour of a role or series name, stable within one figure.

    Example:
        >>> seen = {}
        >>> colour_of("gate", seen), colour_of("32nd", seen), colour_of("32nd", seen)
        ('#d62728', '#17becf', '#17becf')
    """
    if name not in seen:
        extra = sum(1 for n in seen if n not in ROLE_COLOURS)
        seen[name] = ROLE_COLOURS.get(name, PALETTE[extra % len(PALETTE)])
    return seen[name]


def as_mapping(results: R | Mapping[str, R]) -> dict[str, R]:
    """``{name: result}``: a mapping unchanged, a single result as ``{"": result}``.

    Example:
        >>> as_mapping(3), as_mapping({"a": 1})
        ({'': 3}, {'a': 1})
    """
    if isinstance(results, Mapping):
        if not results:
            raise ValueError("no results to plot; pass a result or {model name: result}")
        return dict(results)
    return {"": results}


def model_grid(
    names: Sequence[str],
    rows: int = 1,
    *,
    row_titles: Sequence[str] | None = None,
    specs: list[list[dict[str, Any]]] | None = None,
    row_heights: Sequence[float] | None = None,
    title: str | None = None,
    height: int | None = None,
    shared_yaxes: bool = True,
    horizontal_spacing: float = 0.06,
) -> go.Figure:
    """Subplots with one column per model name (titled when there is more than one model)."""
    cols = len(names)
    titles: list[str] | None = None
    if any(names):
        titles = [
            (f"{name}" if row == 0 else "") if row_titles is None else f"{name} {row_titles[row]}"
            for row in range(rows)
            for name in names
        ]
    elif row_titles is not None:
        titles = [row_titles[row] for row in range(rows) for _ in names]
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=titles,
        specs=specs or [[{}] * cols for _ in range(rows)],
        row_heights=list(row_heights) if row_heights is not None else None,
        shared_yaxes=shared_yaxes,
        horizontal_spacing=horizontal_spacing if cols > 1 else 0.02,
        vertical_spacing=0.12 if rows > 1 else 0.02,
    )
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=height or (380 * rows + 40),
        margin={"t": 90, "l": 60, "r": 20, "b": 50},
    )
    return fig


def layer_ticks(fig: go.Figure, n_layers: int, row: int = 1, col: int = 1) -> None:
    """Integer ticks on a layer axis (about 16 at most)."""
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=max(1, n_layers // 16), row=row, col=col)


def legend_once(fig: go.Figure) -> go.Figure:
    """Group traces by name and show each name once in the legend."""
    seen: set[str] = set()
    for trace in fig.data:
        name = trace.name
        if name is None or getattr(trace, "type", "") == "table":
            continue
        trace.legendgroup = name
        if trace.showlegend is False:
            continue
        trace.showlegend = name not in seen
        seen.add(name)
    return fig


def panel_note(fig: go.Figure, text: str, row: int = 1, col: int = 1, width: int = 60) -> None:
    """Write `text` (wrapped at about `width` characters) at the top left inside one panel.

    Used for results that would otherwise look empty or wrong: undefined points, an all-zero
    series.
    """
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    fig.add_annotation(
        text="<br>".join(lines),
        x=0.01,
        y=0.97,
        xref="x domain",
        yref="y domain",
        xanchor="left",
        yanchor="top",
        align="left",
        showarrow=False,
        font={"size": 11, "color": "#444"},
        bgcolor="rgba(255, 255, 255, 0.8)",
        row=row,
        col=col,
    )

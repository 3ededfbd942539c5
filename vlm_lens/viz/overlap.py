"""Neighbourhood overlap χ per layer: one line per role, with the chance level.

Example:
    >>> import numpy as np
    >>> from vlm_lens.analysis import OverlapResult
    >>> res = OverlapResult({"gate": np.array([0.1, 0.6])}, chance=0.125, k=5, n=40)
    >>> fig = overlap_figure(res)
    >>> [t.name for t in fig.data]
    ['gate', 'chance']
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from vlm_lens.analysis.neighbourhood_overlap import OverlapResult
from vlm_lens.viz._grid import as_mapping, colour_of, layer_ticks, legend_once, model_grid


def overlap_figure(
    results: OverlapResult | Mapping[str, OverlapResult],
    *,
    title: str | None = "Neighbourhood overlap χ with the labels per layer",
) -> go.Figure:
    """χ per layer for every role of `OverlapResult.overlap`, and the chance level (dashed).

    Args:
        results: one result, or ``{model name: result}`` for one column per model.
        title: the figure title.

    Returns:
        The plotly figure.

    Example:
        >>> fig = overlap_figure({"native": chi_a, "non-native": chi_b})  # doctest: +SKIP
    """
    named = as_mapping(results)
    fig = model_grid(list(named), title=title)
    colours: dict[str, str] = {}
    for col, result in enumerate(named.values(), start=1):
        n_layers = 0
        for role, values in result.overlap.items():
            values = np.asarray(values, dtype=np.float64)
            n_layers = max(n_layers, len(values))
            fig.add_trace(
                go.Scatter(
                    x=np.arange(len(values)),
                    y=values,
                    mode="lines+markers",
                    name=role,
                    line={"color": colour_of(role, colours)},
                    hovertemplate=f"{role}<br>layer %{{x}}: χ=%{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.add_trace(
            go.Scatter(
                x=[0, max(n_layers - 1, 0)],
                y=[result.chance, result.chance],
                mode="lines",
                name="chance",
                line={"color": "black", "dash": "dash", "width": 1},
                hovertemplate=f"chance level {result.chance:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=f"layer (k={result.k}, n={result.n})", row=1, col=col)
        layer_ticks(fig, n_layers, 1, col)
    fig.update_yaxes(title_text="χ (neighbourhood overlap)", range=[0, 1.02], row=1, col=1)
    return legend_once(fig)

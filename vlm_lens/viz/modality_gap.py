"""Modality gap per layer: median |cos| between text and image tokens with its interquartile
band, and the modality homogeneity of density clusters.

Example:
    >>> import numpy as np
    >>> from vlm_lens.analysis import ModalityGapResult
    >>> q = np.array([0.1, 0.2])
    >>> res = ModalityGapResult(q, q - 0.05, q + 0.05, np.array([1.0, 0.7]), None, None,
    ...                         "hdbscan", 10, 10)
    >>> [t.name for t in modality_gap_figure(res).data]
    ['q1–q3 |cos|', 'q1–q3 |cos|', 'median |cos|', 'homogeneity']
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from vlm_lens.analysis.modality_gap import ModalityGapResult
from vlm_lens.viz._grid import as_mapping, layer_ticks, legend_once, model_grid

COS_COLOUR = "#1f77b4"
HOMOGENEITY_COLOUR = "#d62728"
BAND = "q1–q3 |cos|"


def modality_gap_figure(
    results: ModalityGapResult | Mapping[str, ModalityGapResult],
    *,
    title: str | None = "Modality gap: text–image |cos| and cluster homogeneity per layer",
) -> go.Figure:
    """Two rows: median |cos| with its q1–q3 band, and cluster homogeneity (when clustered).

    Args:
        results: one result, or ``{model name: result}`` for one column per model.
        title: the figure title.

    Returns:
        The plotly figure; the band is two traces (``q1`` then ``q3`` filled to it).

    Example:
        >>> fig = modality_gap_figure({"native": gap_a, "non-native": gap_b})  # doctest: +SKIP
    """
    named = as_mapping(results)
    fig = model_grid(
        list(named),
        rows=2,
        row_titles=["|cos| text–image", "cluster homogeneity"],
        title=title,
        height=700,
    )
    for col, result in enumerate(named.values(), start=1):
        layers = np.arange(len(result.median_abs_cos))
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=result.q1,
                mode="lines",
                line={"width": 0, "color": COS_COLOUR},
                name=BAND,
                showlegend=False,
                hoverinfo="skip",
            ),
            row=1,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=result.q3,
                mode="lines",
                fill="tonexty",
                fillcolor="rgba(31, 119, 180, 0.2)",
                line={"width": 0, "color": COS_COLOUR},
                name=BAND,
                hoverinfo="skip",
            ),
            row=1,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=result.median_abs_cos,
                mode="lines+markers",
                line={"color": COS_COLOUR},
                name="median |cos|",
                customdata=np.stack([result.q1, result.q3], axis=1),
                hovertemplate="layer %{x}: median %{y:.3f} "
                "(q1 %{customdata[0]:.3f}, q3 %{customdata[1]:.3f})<extra></extra>",
            ),
            row=1,
            col=col,
        )
        if result.method is not None:
            fig.add_trace(
                go.Scatter(
                    x=layers,
                    y=result.homogeneity,
                    mode="lines+markers",
                    line={"color": HOMOGENEITY_COLOUR},
                    name="homogeneity",
                    hovertemplate="layer %{x}: homogeneity %{y:.3f}<extra></extra>",
                ),
                row=2,
                col=col,
            )
        fig.update_xaxes(title_text="layer", row=2, col=col)
        layer_ticks(fig, len(layers), 1, col)
        layer_ticks(fig, len(layers), 2, col)
    fig.update_yaxes(title_text="|cos|", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="homogeneity", range=[0, 1.02], row=2, col=1)
    return legend_once(fig)

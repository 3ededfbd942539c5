"""Modality gap per layer: median |cos| between text and image tokens with its interquartile
band, and the modality homogeneity of density clusters.

Layers whose homogeneity is undefined (fewer than two clusters found,
`vlm_lens.analysis.ModalityGapResult.reasons`) are gaps in the homogeneity line, shaded grey and
annotated with the reason; they are never drawn as 0. The hover of each point gives the number
of clusters and the noise fraction.

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

import re
from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from vlm_lens.analysis.modality_gap import ModalityGapResult
from vlm_lens.viz._grid import as_mapping, layer_ticks, legend_once, model_grid, panel_note

COS_COLOUR = "#1f77b4"
HOMOGENEITY_COLOUR = "#d62728"
BAND = "q1–q3 |cos|"
UNDEFINED_FILL = "rgba(127, 127, 127, 0.15)"


def _runs(layers: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs ``(first, last)`` of sorted layer indices.

    Example:
        >>> _runs([0, 1, 2, 5, 7, 8])
        [(0, 2), (5, 5), (7, 8)]
    """
    runs: list[tuple[int, int]] = []
    for layer in layers:
        if runs and layer == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], layer)
        else:
            runs.append((layer, layer))
    return runs


def undefined_note(result: ModalityGapResult) -> str | None:
    """The text that marks undefined homogeneity: which layers, and why; None if none.

    Example:
        >>> q = np.array([0.1, 0.2, 0.3])
        >>> res = ModalityGapResult(q, q, q, np.array([np.nan, np.nan, 0.5]), np.array([0, 1, 2]),
        ...                         np.zeros(3), "hdbscan", 10, 10, ("none", "one", None))
        >>> undefined_note(res)
        'homogeneity undefined at layers 0–1: none (layer 0); one (layer 1)'
    """
    if result.method is None or result.reasons is None:
        return None
    bad = [i for i, r in enumerate(result.reasons) if r is not None]
    if not bad:
        return None
    where = ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in _runs(bad))
    by_reason: dict[str, list[int]] = {}
    for i in bad:
        short = re.sub(r" \(\d+% noise\)", "", str(result.reasons[i]).split(", so ")[0])
        by_reason.setdefault(short, []).append(i)
    why = "; ".join(
        f"{reason} (layer{'s' if len(ls) > 1 else ''} "
        + ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in _runs(ls))
        + ")"
        for reason, ls in by_reason.items()
    )
    if len(by_reason) == 1:
        why = next(iter(by_reason))
    plural = "s" if len(bad) > 1 else ""
    return f"homogeneity undefined at layer{plural} {where}: {why}"


def modality_gap_figure(
    results: ModalityGapResult | Mapping[str, ModalityGapResult],
    *,
    title: str | None = "Modality gap: text–image |cos| and cluster homogeneity per layer",
) -> go.Figure:
    """Two rows: median |cos| with its q1–q3 band, and cluster homogeneity (when clustered).

    Undefined homogeneity (NaN) is a gap in the line, with the layers shaded and a note giving
    the reason (`undefined_note`); the hover shows clusters found and noise fraction.

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
            clusters = (
                np.asarray(result.n_clusters, dtype=np.float64)
                if result.n_clusters is not None
                else np.full(len(layers), np.nan)
            )
            noise = (
                np.asarray(result.noise_fraction, dtype=np.float64)
                if result.noise_fraction is not None
                else np.full(len(layers), np.nan)
            )
            fig.add_trace(
                go.Scatter(
                    x=layers,
                    y=np.asarray(result.homogeneity, dtype=np.float64),  # NaN: a gap
                    mode="lines+markers",
                    connectgaps=False,
                    line={"color": HOMOGENEITY_COLOUR},
                    name="homogeneity",
                    customdata=np.stack([clusters, noise], axis=1),
                    hovertemplate="layer %{x}: homogeneity %{y:.3f}<br>%{customdata[0]} "
                    "clusters, %{customdata[1]:.0%} noise<extra></extra>",
                ),
                row=2,
                col=col,
            )
            bad = [i for i, r in enumerate(result.reasons or ()) if r is not None]
            for first, last in _runs(bad):
                fig.add_vrect(
                    x0=first - 0.5,
                    x1=last + 0.5,
                    fillcolor=UNDEFINED_FILL,
                    line_width=0,
                    layer="below",
                    row=2,
                    col=col,
                )
            note = undefined_note(result)
            if note is not None:
                panel_note(fig, note, row=2, col=col)
        fig.update_xaxes(title_text="layer", row=2, col=col)
        layer_ticks(fig, len(layers), 1, col)
        layer_ticks(fig, len(layers), 2, col)
    fig.update_yaxes(title_text="|cos|", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="homogeneity", range=[0, 1.02], row=2, col=1)
    return legend_once(fig)

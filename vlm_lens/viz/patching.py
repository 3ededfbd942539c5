"""Gate patching per layer: flip rate toward the source class and similarity to the clean
source distribution, with the unpatched baselines.

When no pair flips at any layer the flip-rate line lies on 0 with its baseline, and the
similarity is often near 0 too: the panel then says "no flips" in words (`no_flips_note`), so
that the result does not read as an empty chart.

Example:
    >>> import numpy as np
    >>> from vlm_lens.analysis import PatchingSweepResult
    >>> res = PatchingSweepResult("residual", np.arange(2), np.array([0.0, 0.9]),
    ...                           np.array([0.2, 0.8]), 0.0, 0.1, np.ones(3), np.ones((2, 3)),
    ...                           np.ones((2, 3)))
    >>> [t.name for t in patching_figure(res).data]
    ['flip rate', 'similarity', 'flip rate, unpatched', 'similarity, unpatched']
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from vlm_lens.analysis.patching_sweep import PatchingSweepResult
from vlm_lens.viz._grid import as_mapping, layer_ticks, legend_once, model_grid, panel_note

FLIP_COLOUR = "#d62728"
SIMILARITY_COLOUR = "#1f77b4"


def no_flips_note(result: PatchingSweepResult) -> str | None:
    """The panel's note when the flip rate is exactly 0 at every layer, else None.

    Example:
        >>> res = PatchingSweepResult("residual", np.arange(2), np.zeros(2), np.array([0.01, 0.02]),
        ...                           0.0, 0.01, np.ones(3), np.ones((2, 3)), np.ones((2, 3)))
        >>> no_flips_note(res)[:50]
        'no flips: patching the gate moved no prediction to'
        >>> no_flips_note(res)[-48:]
        '3 pairs); similarity to the source at most 0.020'
    """
    flips = np.asarray(result.flip_rate, dtype=np.float64)
    if flips.size == 0 or not np.all(flips == 0.0):
        return None
    similarity = np.asarray(result.similarity, dtype=np.float64)
    top = (
        f"; similarity to the source at most {np.nanmax(similarity):.3f}" if similarity.size else ""
    )
    return (
        "no flips: patching the gate moved no prediction to the source class at any layer "
        f"(flip rate 0 over {result.n_pairs} pairs){top}"
    )


def patching_figure(
    results: PatchingSweepResult | Mapping[str, PatchingSweepResult],
    *,
    title: str | None = None,
) -> go.Figure:
    """Flip rate and similarity per (start) layer, and their unpatched baselines (dotted).

    A flip rate of 0 at every layer is written in the panel as "no flips" (`no_flips_note`).

    Args:
        results: one result, or ``{model name: result}`` for one column per model.
        title: the figure title (default names the site).

    Returns:
        The plotly figure.

    Example:
        >>> fig = patching_figure({"native": sweep_a, "non-native": sweep_b})  # doctest: +SKIP
    """
    named = as_mapping(results)
    sites = sorted({r.site for r in named.values()})
    where = "residual stream at one layer" if sites == ["residual"] else "/".join(sites)
    if sites == ["attention"]:
        where = "attention input from the layer on"
    fig = model_grid(list(named), title=title or f"Patching the gate from another class ({where})")
    for col, result in enumerate(named.values(), start=1):
        layers = np.asarray(result.layers)
        span = [int(layers.min()), int(layers.max())] if len(layers) else [0, 0]
        series = (
            ("flip rate", result.flip_rate, FLIP_COLOUR),
            ("similarity", result.similarity, SIMILARITY_COLOUR),
        )
        for name, values, colour in series:
            fig.add_trace(
                go.Scatter(
                    x=layers,
                    y=np.asarray(values, dtype=np.float64),
                    mode="lines+markers",
                    name=name,
                    line={"color": colour},
                    hovertemplate=f"{name}<br>layer %{{x}}: %{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        baselines = (
            ("flip rate, unpatched", result.baseline_flip_rate, FLIP_COLOUR),
            ("similarity, unpatched", result.baseline_similarity, SIMILARITY_COLOUR),
        )
        for name, value, colour in baselines:
            fig.add_trace(
                go.Scatter(
                    x=span,
                    y=[value, value],
                    mode="lines",
                    name=name,
                    line={"color": colour, "dash": "dot", "width": 1.5},
                    hovertemplate=f"{name}: {value:.3f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        note = no_flips_note(result)
        if note is not None:
            panel_note(fig, note, row=1, col=col, width=48)
        fig.update_xaxes(title_text=f"layer ({result.n_pairs} pairs)", row=1, col=col)
        layer_ticks(fig, len(layers), 1, col)
    fig.update_yaxes(title_text="fraction / Σ min(p, q)", range=[0, 1.02], row=1, col=1)
    return legend_once(fig)

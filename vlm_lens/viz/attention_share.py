"""The paper's cross-modal attention figure: per layer, how the text's attention to the image
splits over image-side roles (gate, internal image tokens, sinks...), as stacked bars.

The internal image tokens usually take almost all of it (97% in the organisms), so in the
stacked bars the gate is a sliver. A second row therefore draws every role *but* the dominant
one (the role with the largest mean share, normally ``image``) as lines on its own y scale:
the gate's share per layer is read there.

Example:
    >>> import numpy as np
    >>> from vlm_lens.analysis import AttentionShareResult
    >>> share = np.array([[0.6, 0.4], [0.2, 0.8]])
    >>> res = AttentionShareResult((0, 1), ("gate", "image"), share, share, share[None], None, 1)
    >>> fig = attention_share_figure(res)
    >>> [(t.name, t.type) for t in fig.data], fig.layout.barmode
    ([('gate', 'bar'), ('gate', 'scatter'), ('image', 'bar')], 'stack')
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from vlm_lens.analysis.attention_share import AttentionShareResult
from vlm_lens.viz._grid import as_mapping, colour_of, layer_ticks, legend_once, model_grid


def attention_share_figure(
    results: AttentionShareResult | Mapping[str, AttentionShareResult],
    *,
    drop_empty: bool = True,
    title: str | None = "Share of text→image attention per layer, by role",
) -> go.Figure:
    """Stacked bars per layer of `AttentionShareResult.share`, and the small roles on their own.

    Top row: stacked bars, one colour per role group, summing to 1. Bottom row: the same shares
    of every group except the dominant one (largest mean share), as lines with an automatic y
    range, so that a gate with a few percent of the attention is readable.

    Args:
        results: one result, or ``{model name: result}`` for one column per model.
        drop_empty: leave out groups whose share is zero at every layer (roles the family lacks,
            e.g. ``image_row_end`` outside Emu3).
        title: the figure title.

    Returns:
        The plotly figure (bars stack to 1 at every layer; the lines repeat the bars' values).

    Example:
        >>> fig = attention_share_figure({"native": a, "non-native": b})  # doctest: +SKIP
        >>> fig.show()  # doctest: +SKIP
    """
    named = as_mapping(results)
    fig = model_grid(
        list(named),
        rows=2,
        row_titles=["all roles (stacked)", "without the dominant role (own scale)"],
        row_heights=[0.6, 0.4],
        title=title,
        height=760,
    )
    colours: dict[str, str] = {}
    for col, result in enumerate(named.values(), start=1):
        layers = np.asarray(result.layers)
        dominant = int(np.argmax(result.share.mean(axis=0))) if result.share.size else -1
        for g, group in enumerate(result.groups):
            values = result.share[:, g]
            if drop_empty and not np.any(values > 0):
                continue
            fig.add_trace(
                go.Bar(
                    x=layers,
                    y=values,
                    name=group,
                    marker_color=colour_of(group, colours),
                    hovertemplate=f"{group}<br>layer %{{x}}: %{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            if g != dominant:
                fig.add_trace(
                    go.Scatter(
                        x=layers,
                        y=values,
                        mode="lines+markers",
                        name=group,
                        line={"color": colour_of(group, colours)},
                        hovertemplate=f"{group}<br>layer %{{x}}: %{{y:.4f}}<extra></extra>",
                    ),
                    row=2,
                    col=col,
                )
        fig.update_xaxes(title_text="layer", row=2, col=col)
        layer_ticks(fig, len(layers), 1, col)
        layer_ticks(fig, len(layers), 2, col)
    fig.update_yaxes(title_text="share of text→image attention", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="share (own scale)", rangemode="tozero", row=2, col=1)
    fig.update_layout(barmode="stack", bargap=0.15)
    return legend_once(fig)

"""Text→image attention of one layer as a heatmap over the image's patch grid, drawn over the
image itself.

The values are `AttentionShareResult.per_token`: for each image token (row ends excluded), the
share of the text's attention to the image side that it receives (summed over heads, averaged
over the text query rows and the prompts, normalised over the image side). For a map of one
image, run `vlm_lens.analysis.attention_share` on a batch of that one prompt.

Example:
    >>> import numpy as np
    >>> fig = image_attention_figure(np.arange(16.0) / 120, image=np.zeros((32, 32, 3), "uint8"))
    >>> fig.data[0].type, fig.data[1].type, np.asarray(fig.data[1].z).shape
    ('image', 'heatmap', (4, 4))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from PIL import Image

from vlm_lens.analysis.attention_share import AttentionShareResult
from vlm_lens.images import to_rgb
from vlm_lens.viz._grid import as_mapping, model_grid

ImageInput = Image.Image | np.ndarray
"""A PIL image or an ``[H, W, 3]`` uint8 array."""

TokenShares = AttentionShareResult | Float[np.ndarray, " n_image_tokens"]
"""A result (its ``per_token`` at one layer) or the per-token values themselves."""


def patch_grid(n_tokens: int, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(rows, cols)`` of the image tokens: `grid` if given, else the square root.

    Raises:
        ValueError: when `grid` does not hold `n_tokens`, or `n_tokens` is not a square and no
            grid is given.

    Example:
        >>> patch_grid(1024), patch_grid(6, (2, 3))
        ((32, 32), (2, 3))
    """
    if grid is not None:
        rows, cols = (int(v) for v in grid)
        if rows * cols != n_tokens:
            raise ValueError(
                f"grid {grid} holds {rows * cols} tokens but the image has {n_tokens}; pass "
                "grid=(rows, cols) with rows * cols equal to the number of image tokens"
            )
        return rows, cols
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise ValueError(
            f"{n_tokens} image tokens do not form a square grid; pass grid=(rows, cols)"
        )
    return side, side


def token_shares(shares: TokenShares, layer: int = -1) -> np.ndarray:
    """The ``[n_image_tokens]`` values of `layer` (an index into ``result.layers``).

    Raises:
        ValueError: for a result without ``per_token`` (prompts with different image-token
            counts).

    Example:
        >>> token_shares(np.array([0.5, 0.5])).tolist()
        [0.5, 0.5]
    """
    if isinstance(shares, AttentionShareResult):
        if shares.per_token is None:
            raise ValueError(
                "this AttentionShareResult has no per_token values (its prompts have different "
                "numbers of image tokens); run attention_share on one prompt, or prompts with "
                "images of one size"
            )
        return np.asarray(shares.per_token[layer], dtype=np.float64)
    values = np.asarray(shares, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"per-token shares must be 1-D [n_image_tokens]; got shape {values.shape}")
    return values


def image_attention_figure(
    shares: TokenShares | Mapping[str, TokenShares],
    layer: int | Mapping[str, int] = -1,
    *,
    image: ImageInput | Mapping[str, ImageInput] | None = None,
    grid: tuple[int, int] | None = None,
    opacity: float = 0.6,
    title: str | None = None,
) -> go.Figure:
    """A heatmap of the per-token shares on the ``rows x cols`` patch grid, over `image`.

    The grid is stretched over the whole image (row-major, the processor's token order); for
    processors that crop, the image drawn should be the cropped one. Each model has its own
    colour scale (0 to its largest share).

    Args:
        shares: an `AttentionShareResult` (values at `layer`), a ``[n_image_tokens]`` array, or
            ``{model name: either}`` for one column per model.
        layer: index into ``result.layers`` (``-1``: the last), or one per model name.
        image: the image (or one per model name); ``None`` draws the heatmap alone.
        grid: ``(rows, cols)`` of the image tokens (default: a square).
        opacity: heatmap opacity over the image.
        title: the figure title.

    Returns:
        The plotly figure: per column an ``image`` trace (when given) then a ``heatmap`` whose
        ``z`` is ``[rows, cols]``.

    Example:
        >>> one = attention_share(model, model.prepare(images=img, text=prompt))  # doctest: +SKIP
        >>> image_attention_figure(one, layer=8, image=img).show()  # doctest: +SKIP
    """
    named: dict[str, TokenShares] = as_mapping(shares)
    names = list(named)
    fig = model_grid(names, title=title, shared_yaxes=False, height=460, horizontal_spacing=0.12)
    values = {}
    for name, item in named.items():
        at = layer[name] if isinstance(layer, Mapping) else layer
        values[name] = (at, token_shares(item, at))
    for col, name in enumerate(names, start=1):
        at, flat = values[name]
        rows, cols = patch_grid(flat.size, grid)
        picture = image.get(name) if isinstance(image, Mapping) else image
        height, width = (rows, cols) if picture is None else _pixels(picture).shape[:2]
        if picture is not None:
            fig.add_trace(go.Image(z=_pixels(picture), hoverinfo="skip"), row=1, col=col)
        item = named[name]
        shown = item.layers[at] if isinstance(item, AttentionShareResult) else at
        fig.add_trace(
            go.Heatmap(
                z=flat.reshape(rows, cols),
                x=(np.arange(cols) + 0.5) * width / cols - 0.5,
                y=(np.arange(rows) + 0.5) * height / rows - 0.5,
                zmin=0.0,
                zmax=float(flat.max()) or 1.0,
                opacity=opacity if picture is not None else 1.0,
                colorscale="Inferno",
                colorbar={"title": {"text": "share"}, "len": 0.8, "thickness": 14},
                name=f"layer {shown}",
                hovertemplate="row %{y:.0f}, col %{x:.0f}: %{z:.4f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(
            title_text=f"layer {shown}", showgrid=False, range=[-0.5, width - 0.5], row=1, col=col
        )
        fig.update_yaxes(
            showgrid=False,
            autorange="reversed",
            scaleanchor=f"x{col if col > 1 else ''}",
            row=1,
            col=col,
        )
    for col, trace in enumerate((t for t in fig.data if t.type == "heatmap"), start=1):
        axis = fig.layout[f"xaxis{col if col > 1 else ''}"]
        trace.colorbar.x = axis.domain[1] + 0.005  # each model its own scale, beside its map
    if title is None:
        fig.update_layout(title="Text→image attention over the image's patch grid")
    return fig


def _pixels(image: Any) -> np.ndarray:
    return np.asarray(to_rgb(image))

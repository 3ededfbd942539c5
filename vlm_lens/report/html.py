"""The narrow-gate report as one self-contained HTML page.

plotly.js is inlined once in the head (no CDN: the page works offline); each figure is a
``<div>`` from `vlm_lens.viz`, with several models side by side in one figure. Tables are plain
HTML. The circuitsvis view, when present, carries its own inlined script.

Example:
    >>> page = render_html([], None, {"title": "empty"})  # doctest: +SKIP
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from vlm_lens.analysis.modality_gap import ModalityGapResult
from vlm_lens.experiments.images import ImageSet
from vlm_lens.experiments.narrow_gate import ModelRun
from vlm_lens.viz import (
    attention_share_figure,
    image_attention_figure,
    knockout_figure,
    knockout_table,
    modality_gap_figure,
    overlap_figure,
    patching_figure,
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table.data { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
table.data td, table.data th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
table.data th { background: #f3f3f3; } .note { color: #555; font-size: 0.92em; }
code { background: #f3f3f3; padding: 0 3px; } .skipped { color: #a33; }
.warning { color: #8a5a00; background: #fff6e0; padding: 4px 8px; border-left: 3px solid #e0a000; }
"""

SECTIONS: tuple[tuple[str, str, str], ...] = (
    (
        "attention",
        "Cross-modal attention share",
        "Share of the text's attention to the image side that each role receives, per layer "
        "(post-softmax, summed over heads, averaged over the text after the gate and over "
        "prompts). A narrow gate shows as a large <code>gate</code> share. Top: all roles "
        "stacked; bottom: every role but the dominant one (the internal image tokens) on its own "
        "scale, where the gate's share is read.",
    ),
    (
        "overlap",
        "Neighbourhood overlap χ",
        "Fraction of each image's k nearest neighbours (Euclidean, residual stream after each "
        "layer) with the same label, for the gate, the mean image token and the last token, "
        "averaged within each class first and then over classes, as the paper's dadapy call "
        "(<code>--chi-average sample</code>: the plain mean over images); dashed: chance.",
    ),
    (
        "gap",
        "Modality gap",
        "Median |cos| between one random text token (after the gate) and one random image "
        "token per prompt, with the interquartile band; homogeneity of HDBSCAN clusters of both "
        "with respect to modality (1: the modalities never share a cluster). Homogeneity is "
        "undefined (a gap, shaded, with the reason) at layers where fewer than two clusters "
        "were found; the table gives the clusters and the noise fraction of every layer.",
    ),
    (
        "knockout",
        "Attention knockout",
        "Every layer and head, pre-softmax mask. <code>gate</code>: no position reads the gate; "
        "<code>image-&gt;text</code>: the text after the image reads no image token (the gate "
        "stays readable); <code>random</code>: no position reads 10 random image tokens. "
        "Agreement: top-1 next token equals the baseline's; similarity: Σ min(p, q) with the "
        "baseline's next-token distribution.",
    ),
    (
        "table1",
        "Table 1: tasks under interventions",
        "The paper's Table 1 from <code>vlm-lens evaluate</code>: VQAv2 accuracy (official, "
        "ten leave-one-out annotator subsets), CIDEr-D of captions, χ<sup>out</sup> of the last "
        "token's final-layer residual with the class labels, with no intervention and under "
        "each knockout (every layer, pre-softmax mask; <code>random</code>: 10 random image "
        "tokens, averaged over seeded draws). One table per task, one row per model.",
    ),
    (
        "patching",
        "Patching the gate",
        "The gate's activation of an image of another class written into the run of a target "
        "image at each layer. Flip rate: the target's prediction moves to the source class; "
        "similarity: Σ min(p, q) with the clean source distribution; dotted: unpatched. A flip "
        "rate of 0 at every layer is marked <i>no flips</i> in the panel.",
    ),
    (
        "heatmap",
        "Text→image attention over the image",
        "Per image token, its share of the text's attention to the image side at the chosen "
        "layer, for the first image, drawn over it.",
    ),
)


def _figure_div(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, classes="data", border=0, float_format=lambda v: f"{v:.3f}")


def _by_layer(frame: pd.DataFrame) -> pd.DataFrame:
    """A per-layer frame turned sideways: one column per layer, one row per quantity."""
    wide = frame.set_index("layer").T.reset_index()
    wide.columns = ["layer", *[str(c) for c in wide.columns[1:]]]
    return wide


def _warnings(notes: dict[str, str | None]) -> str:
    """One visible ``<p class='warning'>`` per distinct note, naming the models it is about."""
    by_note: dict[str, list[str]] = {}
    for name, note in notes.items():
        if note:
            by_note.setdefault(note, []).append(name)
    return "".join(
        f"<p class='warning'>{html.escape(', '.join(names))}: {html.escape(note)}</p>"
        for note, names in by_note.items()
    )


def gap_table(gap: ModalityGapResult) -> pd.DataFrame:
    """Per layer: homogeneity (``undefined`` where NaN), clusters found and noise fraction.

    Example:
        >>> import numpy as np
        >>> q = np.zeros(2)
        >>> res = ModalityGapResult(q, q, q, np.array([np.nan, 0.5]), np.array([1, 2]),
        ...                         np.array([0.25, 0.0]), "hdbscan", 5, 5, ("one", None))
        >>> gap_table(res).to_dict("list")["homogeneity"]
        ['undefined', '0.500']
    """
    frame = gap.to_frame()
    return pd.DataFrame(
        {
            "layer": frame["layer"],
            "homogeneity": ["undefined" if pd.isna(v) else f"{v:.3f}" for v in frame.homogeneity],
            "clusters": frame["n_clusters"],
            "noise": [f"{v:.0%}" if pd.notna(v) else "" for v in frame.noise_fraction],
        }
    )


def _figures(runs: Sequence[ModelRun]) -> dict[str, str]:
    """Section id -> HTML (figure div and tables) for the sections with results."""
    out: dict[str, str] = {}
    out["attention"] = _figure_div(
        attention_share_figure({r.name: r.shares for r in runs}), "fig-attention"
    )
    overlap = {r.name: r.overlap for r in runs if r.overlap is not None}
    if overlap:
        out["overlap"] = _warnings(
            {
                name: res.warning and f"χ is uninformative: {res.warning}"
                for name, res in overlap.items()
            }
        ) + _figure_div(overlap_figure(overlap), "fig-overlap")
    gap = {r.name: r.gap for r in runs if r.gap is not None}
    if gap:
        notes = {
            name: res.warning and f"cluster homogeneity is uninformative: {res.warning}"
            for name, res in gap.items()
        }
        clustered = [(name, res) for name, res in gap.items() if res.method is not None]
        out["gap"] = (
            _warnings(notes)
            + _figure_div(modality_gap_figure(gap), "fig-gap")
            + "".join(
                f"<h3>{html.escape(name)}: clusters per layer ({html.escape(str(res.method))})"
                f"</h3>{_table(_by_layer(gap_table(res)))}"
                for name, res in clustered
            )
        )
    tables = "".join(
        f"<h3>{html.escape(r.name)}</h3>{_table(knockout_table(r.knockout))}"
        + (
            f"<p class='note'>accuracy: {html.escape(r.knockout.accuracy_label)}</p>"
            if r.knockout.accuracy_label
            else ""
        )
        for r in runs
    )
    out["knockout"] = (
        _figure_div(
            knockout_figure({r.name: r.knockout for r in runs}, table=False), "fig-knockout"
        )
        + tables
    )
    patching = {r.name: r.patching for r in runs if r.patching is not None}
    if patching:
        out["patching"] = _figure_div(patching_figure(patching), "fig-patching")
    heat = [r for r in runs if r.heatmap is not None]
    if heat:
        fig = image_attention_figure(
            {r.name: r.heatmap for r in heat if r.heatmap is not None},
            layer=0,
            image={r.name: r.heatmap_image for r in heat if r.heatmap_image is not None},
            grid=None if len({r.heatmap_grid for r in heat}) > 1 else heat[0].heatmap_grid,
        )
        out["heatmap"] = _figure_div(fig, "fig-heatmap")
    return out


def evaluation_tables(tables: Sequence[dict[str, Any]]) -> str:
    """HTML of the Table 1 section: one table per task (rows: models, columns: conditions,
    ``n/a`` where a score is undefined), with its metric and number of items.

    Example:
        >>> t = {"task": "vqav2", "model": "m", "metric": "vqa_accuracy", "n": 2,
        ...      "scores": {"baseline": 1.0}}
        >>> "<h3>vqav2" in evaluation_tables([t])
        True
    """
    parts = []
    for task in dict.fromkeys(str(t["task"]) for t in tables):
        rows = [t for t in tables if str(t["task"]) == task]
        frame = pd.DataFrame(
            [
                {
                    "model": t["model"],
                    "n": t["n"],
                    **{c: ("n/a" if v is None else v) for c, v in t["scores"].items()},
                }
                for t in rows
            ]
        )
        metrics = ", ".join(dict.fromkeys(str(t["metric"]) for t in rows))
        parts.append(f"<h3>{html.escape(task)} ({html.escape(metrics)})</h3>{_table(frame)}")
    return "".join(parts)


def _details(runs: Sequence[ModelRun], images: ImageSet | None, meta: dict[str, Any]) -> str:
    models = pd.DataFrame(
        [
            {
                "model": r.name,
                "family": r.family,
                **r.config,
                "prompt": r.prompt,
                "images": r.n_images,
                "seconds": round(sum(r.seconds.values()), 1),
            }
            for r in runs
        ]
    )
    parts = ["<h2 id='details'>Models, data and versions</h2>", _table(models)]
    if images is not None:
        parts.append(f"<p><b>Data</b>: {html.escape(images.source)}</p>")
    for r in runs:
        for step, reason in r.skipped.items():
            parts.append(
                f"<p class='skipped'>{html.escape(r.name)}: {html.escape(step)} skipped: "
                f"{html.escape(reason)}</p>"
            )
    settings = meta.get("settings", {})
    if settings:
        parts.append(
            "<p><b>Settings</b>: "
            + html.escape(", ".join(f"{k}={v}" for k, v in settings.items()))
            + "</p>"
        )
    if "command" in meta:
        parts.append(f"<p><b>Command</b>: <code>{html.escape(meta['command'])}</code></p>")
    versions = meta.get("versions", {})
    if versions:
        parts.append(_table(pd.DataFrame([versions])))
    return "\n".join(parts)


def render_html(runs: Sequence[ModelRun], images: ImageSet | None, meta: dict[str, Any]) -> str:
    """The whole page: title, one section per analysis, the attention views, the details.

    Args:
        runs: one `ModelRun` per model (several: side by side in every figure).
        images: the images the runs used.
        meta: ``title``, ``command``, ``settings``, ``versions``, ``created``, ``evaluation``
            (``table.json`` dicts of `vlm_lens.evaluate`, shown as the Table 1 section; all
            optional).

    Returns:
        The HTML text (about 5 MB: plotly.js is inlined).
    """
    title = meta.get("title", "Narrow-gate report")
    figures = _figures(runs)
    if meta.get("evaluation"):
        figures["table1"] = evaluation_tables(meta["evaluation"])
    body = [
        f"<h1>{html.escape(title)}</h1>",
        "<p class='note'>The analyses of <i>The Narrow Gate</i> (arXiv 2412.06646), made by "
        f"vlm_lens on {html.escape(', '.join(r.name for r in runs))}"
        + (f", {html.escape(meta['created'])}" if "created" in meta else "")
        + ". Details at the <a href='#details'>end</a>.</p>",
    ]
    for key, heading, note in SECTIONS:
        if key not in figures:
            continue
        body += [f"<h2 id='{key}'>{heading}</h2>", f"<p class='note'>{note}</p>", figures[key]]
    views = [r for r in runs if r.view_html]
    if views:
        body += [
            "<h2 id='view'>Attention heads (circuitsvis)</h2>",
            "<p class='note'>All heads of the heatmap's layer on the first prompt; the image "
            "span is collapsed into 8 groups (keys summed, queries averaged).</p>",
        ]
        for r in views:
            body += [f"<h3>{html.escape(r.name)}, layer {r.heatmap_layer}</h3>", r.view_html or ""]
    body.append(_details(runs, images, meta))
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n"
        f"<script type='text/javascript'>{get_plotlyjs()}</script>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )

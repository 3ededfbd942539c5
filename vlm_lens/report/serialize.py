"""The report's numbers as JSON-ready dicts (``--json``): every result's ``to_frame()`` rows.

Example:
    >>> import pandas as pd
    >>> rows(pd.DataFrame({"a": [1.0, float("nan")]}))
    [{'a': 1.0}, {'a': None}]
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import pandas as pd

from vlm_lens.experiments.images import ImageSet
from vlm_lens.experiments.narrow_gate import ModelRun

PACKAGES: tuple[str, ...] = (
    "vlm-lens",
    "torch",
    "transformers",
    "transformer-lens",
    "plotly",
    "circuitsvis",
    "numpy",
    "scikit-learn",
)
"""Packages whose versions the report records."""


def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows as dicts, NaN and NA as ``None``."""
    return json.loads(frame.to_json(orient="records", double_precision=15))


def versions() -> dict[str, str]:
    """Python, the platform and the installed version of each of `PACKAGES`.

    Example:
        >>> sorted(versions())[:3]
        ['circuitsvis', 'numpy', 'platform']
    """
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_to_dict(run: ModelRun) -> dict[str, Any]:
    """Every number of one model's run."""
    out: dict[str, Any] = {
        "model": run.name,
        "family": run.family,
        "config": run.config,
        "prompt": run.prompt,
        "n_images": run.n_images,
        "attention_share": rows(run.shares.to_frame()),
        "knockout": rows(run.knockout.to_frame()),
        "knockout_accuracy": run.knockout.accuracy_label or None,
        "overlap": rows(run.overlap.to_frame()) if run.overlap else None,
        "overlap_average": run.overlap.average if run.overlap else None,
        "overlap_warning": run.overlap.warning if run.overlap else None,
        "modality_gap": rows(run.gap.to_frame()) if run.gap else None,
        "modality_gap_warning": run.gap.warning if run.gap else None,
        "patching": rows(run.patching.to_frame()) if run.patching else None,
        "heatmap": None,
        "skipped": run.skipped,
        "seconds": run.seconds,
    }
    if run.heatmap is not None and run.heatmap.per_token is not None:
        out["heatmap"] = {
            "layer": run.heatmap_layer,
            "grid": list(run.heatmap_grid or ()),
            "per_token": run.heatmap.per_token[0].tolist(),
        }
    return out


def report_dict(runs: Sequence[ModelRun], images: ImageSet, meta: dict[str, Any]) -> dict[str, Any]:
    """The whole report: ``meta`` (command, settings, versions...), the data and every run."""
    return {
        **meta,
        "data": {
            "source": images.source,
            "n_images": len(images),
            "labels": list(images.labels) if images.labels is not None else None,
            "names": list(images.names),
        },
        "models": [run_to_dict(run) for run in runs],
    }

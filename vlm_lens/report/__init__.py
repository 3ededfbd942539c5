"""The narrow-gate report: every analysis of the paper on one or more models, as one
self-contained HTML page (and JSON), the engine of ``vlm-lens narrow-gate``.

Example:
    >>> from vlm_lens.report import build_report
    >>> out = build_report(n_images=16, out="report.html", json_path="r.json")  # doctest: +SKIP
"""

from vlm_lens.errors import ReportInputError
from vlm_lens.experiments.images import ImageSet, folder_images, world_images
from vlm_lens.experiments.narrow_gate import ModelRun, Settings, run_narrow_gate
from vlm_lens.report.build import ReportOutput, build_report, default_models, load_model
from vlm_lens.report.html import render_html
from vlm_lens.report.serialize import report_dict

__all__ = [
    "ImageSet",
    "ModelRun",
    "ReportInputError",
    "ReportOutput",
    "Settings",
    "build_report",
    "default_models",
    "folder_images",
    "load_model",
    "render_html",
    "report_dict",
    "run_narrow_gate",
    "world_images",
]

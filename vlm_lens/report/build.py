"""Build the narrow-gate report end to end: load the models, run, write HTML (and JSON).

Example:
    >>> out = build_report(["organism:nonnative"], n_images=8, out="r.html")  # doctest: +SKIP
    >>> out.html_path.stat().st_size > 1e6  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlm_lens.data.distributed import shared_ranks
from vlm_lens.errors import ReportInputError, VLMLensError
from vlm_lens.evaluate.result import load_tables
from vlm_lens.experiments.images import ImageSet, folder_images, world_images
from vlm_lens.experiments.narrow_gate import ModelRun, Settings, run_narrow_gate
from vlm_lens.model import HookedVLM
from vlm_lens.report.html import render_html
from vlm_lens.report.serialize import report_dict, versions
from vlm_lens.zoo.registry import ORGANISMS, PREFIX, WEIGHTS, organism_path

MODEL_HINT = (
    "pass a hub id, a folder saved with save_pretrained, or a built-in organism ("
    + ", ".join(PREFIX + n for n in ORGANISMS)
    + ")"
)


@dataclass(frozen=True)
class ReportOutput:
    """What `build_report` wrote and computed."""

    html_path: Path
    json_path: Path | None
    runs: tuple[ModelRun, ...]
    images: ImageSet
    seconds: float


def default_models() -> list[str]:
    """Every built-in organism whose weights are installed, in `ORGANISMS` order.

    Example:
        >>> "organism:nonnative" in default_models()
        True
    """
    return [PREFIX + n for n in ORGANISMS if (WEIGHTS / n / "config.json").is_file()]


def check_model_name(name: str) -> None:
    """Fail fast, before loading anything, on a missing folder or an unknown organism.

    Raises:
        ReportInputError: naming the problem and what to pass instead.

    Example:
        >>> check_model_name("organism:nonnative")
        >>> try:
        ...     check_model_name("organism:nosuch")
        ... except ReportInputError as error:
        ...     print(str(error)[:32])
        unknown organism 'organism:nosuc
    """
    if name.startswith(PREFIX):
        try:
            organism_path(name[len(PREFIX) :])
        except (ValueError, FileNotFoundError) as error:
            raise ReportInputError(str(error)) from None
        return
    looks_like_path = name.startswith((".", "~", os.sep))
    if looks_like_path and not Path(name).expanduser().exists():
        raise ReportInputError(f"model folder '{name}' does not exist; {MODEL_HINT}")


def load_model(name: str, *, device: str | None = None) -> HookedVLM:
    """`HookedVLM.from_pretrained` with errors turned into one `ReportInputError` line.

    Raises:
        ReportInputError: for a missing folder, an unknown name, or any failure to load.
    """
    check_model_name(name)
    path = Path(name).expanduser()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return HookedVLM.from_pretrained(str(path) if path.exists() else name, device=device)
    except Exception as error:  # noqa: BLE001 - any loading failure becomes one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ReportInputError(f"cannot load model '{name}': {reason}; {MODEL_HINT}") from None


def load_images(images: str | os.PathLike[str] | ImageSet | None, n_images: int) -> ImageSet:
    """An `ImageSet`: given, read from a folder, or (``None``) the built-in world."""
    if isinstance(images, ImageSet):
        return images
    if images is None:
        return world_images(n_images)
    return folder_images(images, n_images)


def build_report(
    models: Sequence[str] | None = None,
    images: str | os.PathLike[str] | ImageSet | None = None,
    *,
    out: str | os.PathLike[str] = "narrow_gate_report.html",
    json_path: str | os.PathLike[str] | None = None,
    n_images: int = 48,
    settings: Settings | None = None,
    device: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
    evaluation: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
) -> ReportOutput:
    """Run every narrow-gate analysis on each model and write one HTML report.

    Args:
        models: names or folders (default: `default_models`); several are shown side by side.
        images: a folder (``DIR/*.jpg`` or ``DIR/<label>/*.jpg``), an `ImageSet`, or ``None``
            for the built-in synthetic world.
        out: the HTML file to write.
        json_path: also write every number as JSON here.
        n_images: most images to use.
        settings: analysis settings (`Settings`).
        device: where to load the models.
        progress: show progress bars.
        log: called with one line per step.
        command: the command line, recorded in the report.
        evaluation: results of ``vlm-lens evaluate`` (``--out`` folders, a folder of them, or
            ``table.json`` files), shown as the Table 1 section and kept in the JSON.

    Returns:
        A `ReportOutput`. Inside `vlm_lens.data.distributed.sharded` (a ``torchrun`` launch)
        the ranks share every analysis's batches, each returns every result, and only rank 0
        writes the files.

    Raises:
        ReportInputError: for bad models, images or options (one line naming the fix).
    """
    start = time.perf_counter()
    settings = settings or Settings()
    if n_images < 2:
        raise ReportInputError(f"--n-images must be at least 2, got {n_images}")
    names = list(models) if models else default_models()
    if not names:
        raise ReportInputError(f"no built-in organism weights are installed; {MODEL_HINT}")
    if len(set(names)) != len(names):
        raise ReportInputError(f"a model is given twice in {names}; name each model once")
    for name in names:
        check_model_name(name)
    tables = _evaluation(evaluation)
    image_set = load_images(images, n_images)
    if len(image_set) < 2:
        raise ReportInputError(f"the report needs at least 2 images; got {len(image_set)}")
    say = log or (lambda _line: None)
    runs = []
    for name in names:
        say(f"[{name}] loading")
        model = load_model(name, device=device)
        try:
            runs.append(
                run_narrow_gate(
                    model, image_set, name=name, settings=settings, progress=progress, log=say
                )
            )
        except VLMLensError as error:
            raise ReportInputError(f"{name}: {str(error).splitlines()[0]}") from None
        del model
    meta: dict[str, Any] = {
        "title": "Narrow-gate report",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {"n_images": n_images, **asdict(settings)},
        "versions": versions(),
    }
    if command:
        meta["command"] = command
    if tables:
        meta["evaluation"] = tables
    html_path = Path(out)
    json_out = None if json_path is None else Path(json_path)
    if shared_ranks().rank != 0:  # under a launch every rank has the runs; rank 0 writes them
        return ReportOutput(
            html_path, json_out, tuple(runs), image_set, time.perf_counter() - start
        )
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render_html(runs, image_set, meta), encoding="utf-8")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        data = report_dict(runs, image_set, meta)
        json_out.write_text(json.dumps(data, indent=1, allow_nan=False), encoding="utf-8")
    return ReportOutput(html_path, json_out, tuple(runs), image_set, time.perf_counter() - start)


def _evaluation(
    evaluation: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
) -> list[dict[str, Any]]:
    """The ``table.json`` dicts of the evaluation results, or ``[]``."""
    if evaluation is None:
        return []
    paths = [evaluation] if isinstance(evaluation, (str, os.PathLike)) else list(evaluation)
    tables: list[dict[str, Any]] = []
    for path in paths:
        try:
            tables += load_tables(path)
        except VLMLensError as error:
            raise ReportInputError(f"--evaluation: {error}") from None
    return tables

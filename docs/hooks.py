"""The tutorials as executed notebooks: jupytext reads each ``tutorials/NN_*.py`` percent
script, nbclient runs it in a fresh kernel, and the executed ``.ipynb`` is written.

Used three ways:

- ``python docs/hooks.py [OUT]`` writes ``OUT/NN_*.ipynb`` (default ``docs/tutorials/``);
- ``mkdocs build`` runs `on_pre_build` (this file is named in mkdocs.yml's ``hooks:``), which
  writes the notebooks the site shows into ``docs/tutorials/`` when they are missing or older
  than their script;
- the test suite (``tests/test_tutorial_notebooks.py``, ``tests/test_docs_build.py``) calls
  `executed`, which runs each tutorial once per process.

The ``.py`` files are the source of truth (tracked); the ``.ipynb`` files are generated and
ignored by git.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 300


@functools.cache
def executed(path: Path) -> Any:
    """The tutorial at `path` as an executed notebook (an ``nbformat`` node).

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised; the message shows the cell and
            its traceback.
    """
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return notebook


def execute_all(paths: list[Path] = TUTORIALS, workers: int = 2) -> list[Any]:
    """`executed` for every path, `workers` kernels at a time (the CI machine has 2 cores)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(executed, paths))


def write_notebooks(out: Path, *, only_stale: bool = False) -> list[Path]:
    """Write every tutorial, executed, as ``out/<name>.ipynb``; returns the paths written."""
    import nbformat

    out.mkdir(parents=True, exist_ok=True)
    written = []
    stale = [
        path
        for path in TUTORIALS
        if not only_stale
        or not (out / f"{path.stem}.ipynb").exists()
        or (out / f"{path.stem}.ipynb").stat().st_mtime < path.stat().st_mtime
    ]
    execute_all(stale)
    for path in TUTORIALS:
        target = out / f"{path.stem}.ipynb"
        if only_stale and target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
            continue
        nbformat.write(executed(path), target)
        written.append(target)
    return written


def on_pre_build(config: Any) -> None:
    """mkdocs hook: executed tutorials in ``<docs_dir>/tutorials/`` before files are read."""
    write_notebooks(Path(config["docs_dir"]) / "tutorials", only_stale=True)


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "tutorials"
    for written in write_notebooks(folder):
        sys.stdout.write(f"{written}\n")

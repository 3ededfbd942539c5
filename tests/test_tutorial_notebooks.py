"""The tutorials run as notebooks: each jupytext percent script in tutorials/ is converted and
executed cell by cell with nbclient in a fresh kernel (any cell error fails), and its figures
carry an HTML output that survives export (plotly's mime bundle alone would not)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests._docs_hooks import docs_hooks

HOOKS = docs_hooks()
TUTORIALS = HOOKS.TUTORIALS
TOPICS = (
    "token_roles_and_hooks",
    "narrow_gate_pipeline",
    "knockout_and_patching",
    "adding_a_family",
)
PLOTLY = "application/vnd.plotly.v1+json"


@pytest.fixture(scope="module")
def notebooks() -> dict[str, object]:
    return dict(zip((p.name for p in TUTORIALS), HOOKS.execute_all(TUTORIALS), strict=True))


def _displays(notebook: object) -> list[dict[str, object]]:
    return [
        output["data"]
        for cell in notebook.cells  # type: ignore[attr-defined]
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type in ("display_data", "execute_result")
    ]


def test_every_topic_has_a_tutorial() -> None:
    names = [p.name for p in TUTORIALS]
    for topic in TOPICS:
        assert any(topic in name for name in names), f"no tutorials/NN_*{topic}*.py"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_tutorial_executes_with_figures_that_export(path: Path, notebooks: dict) -> None:
    displays = _displays(notebooks[path.name])
    figures = [d for d in displays if PLOTLY in d]
    assert all("text/html" in d for d in figures), "a plotly figure without text/html"
    views = [d for d in displays if "circuits-vis" in str(d.get("text/html", ""))]
    assert views, f"{path.name} shows no circuitsvis view"
    if "adding_a_family" not in path.name:  # random weights there: no figure worth drawing
        assert figures, f"{path.name} shows no figure"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_tutorial_is_a_paired_percent_script_that_keeps_vlm_lens_hooks(path: Path) -> None:
    source = path.read_text()
    assert "formats: py:percent,ipynb" in source and "# %%" in source, "not a jupytext pair"
    tree = ast.parse(source)
    bound = {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
    } | {arg.arg for node in ast.walk(tree) if isinstance(node, ast.arguments) for arg in node.args}
    assert "hooks" not in bound, f"{path.name} rebinds `hooks` (vlm_lens.hooks); rename it"

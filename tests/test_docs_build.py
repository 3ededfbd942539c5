"""The docs site builds with ``mkdocs build --strict``: the API reference from the docstrings
(mkdocstrings), the pattern pages, and the tutorials as executed notebooks (mkdocs-jupyter),
whose figures and circuitsvis views survive into the HTML."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mkdocs.commands.build import build
from mkdocs.config import load_config

from tests._docs_hooks import ROOT, docs_hooks


def test_site_builds_strict_with_executed_tutorials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs, ignore=shutil.ignore_patterns("*.ipynb", "__pycache__"))
    hooks = docs_hooks()
    written = hooks.write_notebooks(docs / "tutorials")  # executed once per test process
    assert [p.stem for p in written] == [p.stem for p in hooks.TUTORIALS]
    site = tmp_path / "site"
    build(
        load_config(str(ROOT / "mkdocs.yml"), docs_dir=str(docs), site_dir=str(site), strict=True)
    )

    for path in hooks.TUTORIALS:
        page = (site / "tutorials" / path.stem / "index.html").read_text()
        assert "circuits-vis" in page, f"{path.stem}: the circuitsvis view did not export"
        if "adding_a_family" not in path.stem:
            assert "Plotly.newPlot" in page, f"{path.stem}: no plotly figure in the HTML"
    for name in ("knockout", "patching", "steering", "attention_share", "datasets"):
        assert (site / "patterns" / name / "index.html").exists()
    api = (site / "api" / "model" / "index.html").read_text()
    assert "run_with_cache" in api and "prepare" in api

"""The README's main job and the tutorials run offline."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from vlm_lens.demo import main
from vlm_lens.testing import TINY_FAMILIES

TUTORIALS = sorted((Path(__file__).parent.parent / "tutorials").glob("*.py"))


def test_demo_runs_and_reports_parity(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    for family in TINY_FAMILIES:
        assert f"=== {family}" in out
    assert out.count("equal to Hugging Face: True") == len(TINY_FAMILIES)
    assert "gate" in out and "hook_image_embeds" in out


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_tutorial_runs(path: Path) -> None:
    runpy.run_path(str(path), run_name="__main__")

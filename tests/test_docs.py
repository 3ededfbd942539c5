"""The README's demo runs offline (the tutorials run as notebooks: test_tutorial_notebooks.py)."""

from __future__ import annotations

import pytest

from vlm_lens.demo import main
from vlm_lens.testing import TINY_FAMILIES


def test_demo_runs_and_reports_parity(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    for family in TINY_FAMILIES:
        assert f"=== {family}" in out
    assert out.count("equal to Hugging Face: True") == len(TINY_FAMILIES)
    assert "gate" in out and "hook_image_embeds" in out

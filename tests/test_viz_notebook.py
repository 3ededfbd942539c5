"""viz.notebook_setup: the renderer that writes both JupyterLab's bundle and HTML."""

from __future__ import annotations

from collections.abc import Iterator

import plotly.io as pio
import pytest

from vlm_lens import viz
from vlm_lens.errors import VLMInputError
from vlm_lens.viz.notebook import CONNECTED, OFFLINE


@pytest.fixture(autouse=True)
def keep_renderer() -> Iterator[None]:
    before = pio.renderers.default
    yield
    pio.renderers.default = before


def test_default_writes_plotly_mime_and_html() -> None:
    assert viz.notebook_setup(renderer="json") == "json"  # no notebook here to activate
    assert pio.renderers.default == "json"
    parts = CONNECTED.split("+")
    assert "plotly_mimetype" in parts and "notebook_connected" in parts
    assert OFFLINE.split("+") == ["plotly_mimetype", "notebook"]


def test_unknown_renderer_is_refused_with_the_known_ones() -> None:
    with pytest.raises(VLMInputError, match="no renderer 'nope'.*notebook_connected"):
        viz.notebook_setup(renderer="json+nope")

"""Make vlm_lens' figures display in notebooks and survive export to HTML.

Plotly's automatic renderer choice shows figures in a live JupyterLab session but writes only
a JSON bundle into the saved notebook, which an HTML export (nbconvert, mkdocs-jupyter, GitHub)
drops, so an executed notebook opened elsewhere shows blank cells. `notebook_setup` picks a
renderer that writes both: plotly's own mime type (JupyterLab and VS Code render it) and an
HTML ``text/html`` output that any exported page shows.
"""

from __future__ import annotations

import plotly.io as pio

from vlm_lens.errors import VLMInputError

#: The renderer of `notebook_setup()`: JupyterLab's mime bundle plus HTML that loads plotly.js.
CONNECTED = "plotly_mimetype+notebook_connected"
#: The renderer of `notebook_setup(offline=True)`: the same, with plotly.js inlined in the notebook.
OFFLINE = "plotly_mimetype+notebook"


def notebook_setup(*, offline: bool = False, renderer: str | None = None) -> str:
    """Set plotly's default renderer for figures that show in JupyterLab and in exported HTML.

    Call it once at the top of a notebook; every ``fig.show()`` (and a figure left as a cell's
    last value) then writes two outputs: ``application/vnd.plotly.v1+json`` for JupyterLab and
    ``text/html`` for the notebook's HTML export. vlm_lens' progress bars are ``tqdm.auto``
    bars, which render as widgets when ``ipywidgets`` is installed (it is in the dev extras).

    Args:
        offline: inline plotly.js (about 4 MB, once per notebook) instead of loading it from
            plotly's CDN when the page opens; use it for notebooks opened without a network.
        renderer: any plotly renderer string instead (``"plotly_mimetype+notebook"``, ...).

    Returns:
        The renderer now in use.

    Raises:
        VLMInputError: for a renderer plotly does not know, naming the ones it does.

    Example:
        >>> import plotly.io as pio
        >>> from vlm_lens import viz
        >>> before = pio.renderers.default
        >>> viz.notebook_setup(renderer="json")  # the doctest has no notebook to draw in
        'json'
        >>> pio.renderers.default = before
        >>> viz.notebook_setup()  # doctest: +SKIP
        'plotly_mimetype+notebook_connected'
    """
    chosen = renderer if renderer is not None else (OFFLINE if offline else CONNECTED)
    known = set(pio.renderers)
    unknown = [name for name in chosen.split("+") if name not in known]
    if unknown:
        raise VLMInputError(
            f"plotly has no renderer {', '.join(map(repr, unknown))}; use one of "
            f"{sorted(known)} (joined with '+'), or call notebook_setup() without renderer="
        )
    pio.renderers.default = chosen
    return chosen

"""Plotly figures and circuitsvis views built from analysis results; never touches the model.

Every figure function takes a result (or ``{model name: result}`` for a side-by-side of several
models, one column each) and returns a ``plotly.graph_objects.Figure``; show it with
``fig.show()`` or save it with ``fig.write_html(...)``. In a notebook, call `notebook_setup()`
once first, so that figures show in JupyterLab and in the notebook's HTML export.

| function | input | the paper's figure |
|---|---|---|
| `attention_share_figure` | `AttentionShareResult` | cross-modal attention, stacked by role |
| `overlap_figure` | `OverlapResult` | χ per layer and role, with chance |
| `modality_gap_figure` | `ModalityGapResult` | median \\|cos\\| with IQR; homogeneity |
| `knockout_figure` | `KnockoutResult` | the knockout table, as a table and bars |
| `patching_figure` | `PatchingSweepResult` | flip rate and similarity per layer |
| `image_attention_figure` | `AttentionShareResult` | text→image attention over the image |
| `attention_heads_view` | a ``[head, q, k]`` pattern | circuitsvis, image span collapsed |
| `notebook_setup` | (none) | plotly's renderer for notebooks and their HTML export |

Example:
    >>> import numpy as np
    >>> from vlm_lens.analysis import OverlapResult
    >>> chi = OverlapResult({"gate": np.array([0.1, 0.5])}, chance=0.1, k=5, n=50)
    >>> fig = overlap_figure({"native": chi, "non-native": chi})
    >>> [t.name for t in fig.data if t.showlegend is not False]
    ['gate', 'chance']
"""

from vlm_lens.viz.attention_share import attention_share_figure
from vlm_lens.viz.circuits import attention_heads_view, collapse_image_span
from vlm_lens.viz.image_attention import image_attention_figure, patch_grid
from vlm_lens.viz.knockout import knockout_figure, knockout_table
from vlm_lens.viz.modality_gap import modality_gap_figure
from vlm_lens.viz.notebook import notebook_setup
from vlm_lens.viz.overlap import overlap_figure
from vlm_lens.viz.patching import patching_figure

__all__ = [
    "attention_heads_view",
    "attention_share_figure",
    "collapse_image_span",
    "image_attention_figure",
    "knockout_figure",
    "knockout_table",
    "modality_gap_figure",
    "notebook_setup",
    "overlap_figure",
    "patch_grid",
    "patching_figure",
]

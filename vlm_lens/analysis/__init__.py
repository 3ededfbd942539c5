"""The paper's measurements as functions that return small result objects with ``.to_frame()``.

Model-facing analyses take a `HookedVLM` and batches and reduce inside hooks:
`attention_share` (f^l_j by role), `patching_sweep` (flip rate and similarity per layer),
`knockout_effect` (next-token change under each knockout), `knockout_sweep` (the effect of a
knockout per layer window), `logit_lens`, `find_sinks`, and
`representations` (one vector per prompt and layer, the input of the representation analyses).
`neighbourhood_overlap` (χ per layer) and `modality_gap` (median |cos| and cluster homogeneity)
take representations, from `representations` or from a `vlm_lens.data.ActivationStore`.
`run_sweep` runs many interventions on one batch, sharing the clean prefix they cannot change
(the sweeps use it). `save_result` / `load_result` write every result to JSON or safetensors and
read it back exactly, with its ``meta`` (what model, inputs and settings produced it).
"""

from vlm_lens.analysis.attention_share import (
    DEFAULT_GROUPS,
    AttentionShareResult,
    attention_share,
    group_masks,
)
from vlm_lens.analysis.knockout_effect import KnockoutResult, knockout_effect
from vlm_lens.analysis.knockout_sweep import KnockoutSweepResult, knockout_sweep
from vlm_lens.analysis.logit_lens import LogitLensResult, logit_lens
from vlm_lens.analysis.modality_gap import ModalityGapResult, modality_gap
from vlm_lens.analysis.neighbourhood_overlap import OverlapResult, neighbourhood_overlap
from vlm_lens.analysis.patching_sweep import PatchingSweepResult, PatchPair, patching_sweep
from vlm_lens.analysis.persist import load_meta, load_result, register_result, save_result
from vlm_lens.analysis.representations import representations
from vlm_lens.analysis.sinks import SinkResult, find_sinks
from vlm_lens.engine.sweep import SweepResult, run_sweep

__all__ = [
    "DEFAULT_GROUPS",
    "AttentionShareResult",
    "KnockoutResult",
    "KnockoutSweepResult",
    "LogitLensResult",
    "ModalityGapResult",
    "OverlapResult",
    "PatchPair",
    "PatchingSweepResult",
    "SinkResult",
    "SweepResult",
    "attention_share",
    "find_sinks",
    "group_masks",
    "knockout_effect",
    "knockout_sweep",
    "load_meta",
    "load_result",
    "logit_lens",
    "modality_gap",
    "neighbourhood_overlap",
    "patching_sweep",
    "register_result",
    "representations",
    "run_sweep",
    "save_result",
]

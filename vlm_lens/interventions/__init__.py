"""Interventions: knockout, patching, steering and image-token ablation as ``fwd_hooks``.

Each function returns an `Intervention`: a plain TransformerLens ``fwd_hooks`` list (pass it to
``model.run_with_hooks(batch, fwd_hooks=...)``, ``model.hooks(...)`` or
``model.generate(batch, fwd_hooks=...)``; add two with ``+``) that also records the earliest
position it can change.
"""

from vlm_lens.engine.intervention import Intervention
from vlm_lens.interventions.image_ablation import ablate_image_tokens
from vlm_lens.interventions.knockout import (
    gate_knockout,
    image_to_text_knockout,
    knockout,
    last_layers,
    random_image_knockout,
)
from vlm_lens.interventions.patching import (
    PatchSource,
    attention_input_sites,
    patch,
    record,
    residual_site,
)
from vlm_lens.interventions.steering import mean_activation, steer, steering_vector

__all__ = [
    "Intervention",
    "PatchSource",
    "ablate_image_tokens",
    "attention_input_sites",
    "mean_activation",
    "patch",
    "record",
    "residual_site",
    "steer",
    "steering_vector",
    "gate_knockout",
    "image_to_text_knockout",
    "knockout",
    "last_layers",
    "random_image_knockout",
]

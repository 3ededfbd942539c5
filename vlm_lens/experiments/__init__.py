"""Experiments built from the analyses: the narrow-gate run on one model and its image sets.

`run_narrow_gate` runs every measurement of the paper on one model (`vlm_lens.report` turns
runs into the HTML page); `world_images` and `folder_images` give it images and labels.
"""

from vlm_lens.experiments.images import ImageSet, folder_images, world_images
from vlm_lens.experiments.narrow_gate import ModelRun, Settings, run_narrow_gate

__all__ = ["ImageSet", "ModelRun", "Settings", "folder_images", "run_narrow_gate", "world_images"]

"""Interventions: knockout, patching, steering and image-token ablation as ``fwd_hooks``."""

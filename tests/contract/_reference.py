"""Independent references the contract checks compare against: the plain Hugging Face copy of a
wrapped model, switched or hooked with plain PyTorch and Hugging Face APIs only."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tests.conftest import Wrapped


@contextmanager
def on_sdpa(w: Wrapped) -> Iterator[torch.nn.Module]:
    """The wrapped model on SDPA for the block (eager again after it), and an HF copy of the
    reference switched to SDPA with Hugging Face's own ``set_attn_implementation``."""
    reference = copy.deepcopy(w.reference)
    reference.set_attn_implementation("sdpa")
    w.model.set_attn_implementation("sdpa")
    try:
        yield reference
    finally:
        w.model.set_attn_implementation("eager")

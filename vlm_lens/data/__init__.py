"""Running over datasets: activation collection at roles, a disk-backed store, resumable runs.

`Probe` says what to keep (a hook site, layers, positions, a reduction done inside the hook);
`collect` runs one batch; `run_dataset` runs a whole list of `Example` values in chunks with a
progress bar into an `ActivationStore` on disk and resumes after an interruption;
`prepare_batches` cuts images and prompts into batches that fit in memory, for the sweeps.
"""

from vlm_lens.data.batches import prepare_batches
from vlm_lens.data.collect import Probe, collect
from vlm_lens.data.examples import Example, make_examples
from vlm_lens.data.runner import run_dataset
from vlm_lens.data.store import ActivationStore
from vlm_lens.errors import StoreConfigError

__all__ = [
    "ActivationStore",
    "Example",
    "Probe",
    "StoreConfigError",
    "collect",
    "make_examples",
    "prepare_batches",
    "run_dataset",
]

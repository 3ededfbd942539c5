"""Running over datasets: activation collection at roles, a disk-backed store, resumable runs.

`Probe` says what to keep (a hook site, layers, positions, a reduction done inside the hook);
`collect` runs one batch; `run_dataset` runs a whole list of `Example` values in chunks with a
progress bar into an `ActivationStore` on disk and resumes after an interruption;
`prepare_batches` cuts images and prompts into batches that fit in memory, for the sweeps.
A store's fingerprint covers everything that changes its numbers (`identity`: every weight's
bytes, the active hooks by content, the attention implementation; the probes; the image
contents), and every chunk is checked on read (`StoreDamagedError`). Under ``torchrun`` or
``accelerate launch``, `run_dataset` shares its chunks between the ranks, and the analyses their
batches inside `vlm_lens.data.distributed.sharded`.
"""

from vlm_lens.data.batches import prepare_batches
from vlm_lens.data.collect import Probe, collect
from vlm_lens.data.examples import Example, make_examples
from vlm_lens.data.runner import run_dataset
from vlm_lens.data.store import ActivationStore
from vlm_lens.errors import HookFingerprintError, StoreConfigError, StoreDamagedError

__all__ = [
    "ActivationStore",
    "Example",
    "HookFingerprintError",
    "Probe",
    "StoreConfigError",
    "StoreDamagedError",
    "collect",
    "make_examples",
    "prepare_batches",
    "run_dataset",
]

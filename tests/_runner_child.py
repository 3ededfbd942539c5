"""Test helper for test_data_runner.py: a small dataset run that can SIGKILL itself.

``python tests/_runner_child.py OUT_DIR KILL_AFTER_CHUNK`` runs `run_dataset` on the tiny LLaVA
with the dataset of `setup` and kills its own process (SIGKILL, no clean-up of any kind) right
after chunk ``KILL_AFTER_CHUNK`` is on disk; ``-1`` never kills. The test imports `setup` and
`RUN_KWARGS` so that the in-process runs are the same run.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from vlm_lens import HookedVLM
from vlm_lens.data.collect import Probe
from vlm_lens.data.examples import Example
from vlm_lens.data.runner import run_dataset
from vlm_lens.data.store import ActivationStore
from vlm_lens.positions import after
from vlm_lens.testing import build_tiny, sample_image

N_EXAMPLES = 10
RUN_KWARGS: dict[str, Any] = {
    "batch_size": 3,  # chunks of 3, 3, 3, 1 examples
    "seed": 7,
    "prompt": "USER: {image}\n{text} ASSISTANT:",
    "logit_tokens": [5, 40, 200],
    "progress": False,
}


def setup(n_examples: int = N_EXAMPLES) -> tuple[HookedVLM, list[Example], list[Probe]]:
    """The tiny LLaVA, `n_examples` examples of different lengths, and the probes."""
    tiny = build_tiny("llava")
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    examples = [
        Example(
            sample_image(i, tiny.image_size),
            "Say" + " more" * (i % 4) + "?",
            label=i % 3,
            id=f"ex{i}",
        )
        for i in range(n_examples)
    ]
    probes = [
        Probe("gate", site="resid_post"),
        Probe("image", site="resid_pre", positions="image", reduce="mean", layers=[-1]),
        Probe("text", site="mlp_out", positions=after("text", "image"), reduce="random"),
    ]
    return model, examples, probes


def main(argv: list[str]) -> int:
    out_dir, kill_after = argv[0], int(argv[1])
    model, examples, probes = setup()

    def on_chunk_written(chunk: int, store: ActivationStore) -> None:  # noqa: ARG001
        if chunk == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    run_dataset(model, examples, probes, out_dir, on_chunk_written=on_chunk_written, **RUN_KWARGS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Write ``dadapy_label_overlap.json``: dadapy's own ``Data.return_label_overlap`` on fixed inputs.

dadapy (the paper's tool for χ) pins ``numpy<2`` and imports jax, so it cannot share the
test environment (pyarrow, through transformers' datasets, needs numpy 2). Run this in a
separate environment with dadapy installed; `tests/test_chi_average.py` compares vlm_lens'
χ with the values dadapy wrote, on the inputs stored next to them.

    python -m venv /tmp/adp && /tmp/adp/bin/pip install dadapy
    /tmp/adp/bin/python tests/golden/make_dadapy_label_overlap.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dadapy
import numpy as np
from dadapy.data import Data

CASES = [  # (name, class sizes, k, dimension, centre spread, seed): unbalanced classes
    ("three_blobs_k5", [24, 9, 7], 5, 6, 1.2, 0),
    ("six_classes_k30", [90, 60, 50, 40, 35, 25], 30, 16, 0.5, 1),
    ("two_classes_k3", [15, 5], 3, 4, 0.4, 2),
]


def case(sizes: list[int], k: int, dim: int, spread: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.normal(size=(len(sizes), dim)) * spread
    x = centres[labels] + rng.normal(size=(len(labels), dim))
    data = Data(coordinates=x, maxk=k, verbose=False)
    return {
        "k": k,
        "labels": labels.tolist(),
        "x": x.tolist(),  # float64 values round-trip exactly through JSON
        "class_weighted": float(data.return_label_overlap(labels, k=k)),
        "plain": float(data.return_label_overlap(labels, k=k, weighted=False)),
    }


if __name__ == "__main__":
    out = {
        "dadapy": dadapy.__version__ if hasattr(dadapy, "__version__") else "0.3.4",
        "numpy": np.__version__,
        "cases": {name: case(*rest) for name, *rest in CASES},
    }
    path = Path(__file__).with_name("dadapy_label_overlap.json")
    path.write_text(json.dumps(out) + "\n")
    sys.stdout.write(f"wrote {path}\n")

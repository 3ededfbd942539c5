"""χ's two averages (class-first as the paper's dadapy call, plain mean) and its warning.

The expectations are recomputed here from the definitions with a full numpy distance matrix
and plain Python loops; dadapy's own ``Data.return_label_overlap`` outputs, written by
``tests/golden/make_dadapy_label_overlap.py`` in an environment where dadapy installs, are
compared on their stored inputs, and where dadapy is importable it is also
run here on the same input.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm_lens.analysis import neighbourhood_overlap as overlap_per_layer
from vlm_lens.errors import UninformativeMetricWarning
from vlm_lens.metrics import (
    neighbourhood_overlap,
    overlap_caveat,
    overlap_chance_level,
)

LABELS = [0] * 24 + [1] * 9 + [2] * 7  # unbalanced: the two averages differ
K = 5


def _data(seed: int = 0) -> np.ndarray:
    """Three overlapping blobs: overlaps between 0 and 1, no distance ties."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 6)) * 1.2
    return np.stack([centres[c] + rng.normal(size=6) for c in LABELS])


def _reference(x: np.ndarray, labels: list[int], k: int) -> tuple[float, float]:
    """(class-first mean, plain mean) of the per-sample overlap, from the definition."""
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    per_sample = []
    for i in range(len(labels)):
        order = [j for j in np.argsort(d[i], kind="stable") if j != i][:k]
        per_sample.append(sum(labels[j] == labels[i] for j in order) / k)
    by_class: dict[int, list[float]] = defaultdict(list)
    for label, value in zip(labels, per_sample, strict=True):
        by_class[label].append(value)
    class_mean = sum(sum(v) / len(v) for v in by_class.values()) / len(by_class)
    return class_mean, sum(per_sample) / len(per_sample)


def test_both_averages_match_the_definition_and_differ() -> None:
    x = _data()
    by_class, by_sample = _reference(x, LABELS, K)
    assert abs(by_class - by_sample) > 0.01  # the data tell the two apart
    assert neighbourhood_overlap(x, LABELS, k=K) == pytest.approx(by_class, abs=1e-12)
    assert neighbourhood_overlap(x, LABELS, k=K, average="class") == pytest.approx(by_class)
    assert neighbourhood_overlap(x, LABELS, k=K, average="sample") == pytest.approx(by_sample)
    # torch float32 input and string labels give the same
    names = [f"c{c}" for c in LABELS]
    t = torch.as_tensor(x, dtype=torch.float32)
    assert neighbourhood_overlap(t, names, k=K) == pytest.approx(by_class, abs=1e-12)


def test_chance_levels_match_random_neighbours() -> None:
    n = len(LABELS)
    per_sample = [(LABELS.count(c) - 1) / (n - 1) for c in LABELS]  # i's expected share
    pairs = list(zip(per_sample, LABELS, strict=True))
    by_class = np.mean([np.mean([p for p, c in pairs if c == j]) for j in set(LABELS)])
    sample = overlap_chance_level(LABELS, average="sample")
    assert overlap_chance_level(LABELS) == pytest.approx(by_class, abs=1e-15)
    assert sample == pytest.approx(np.mean(per_sample), abs=1e-15)
    assert overlap_chance_level(LABELS) != pytest.approx(sample)


def test_analysis_threads_the_average_and_its_chance() -> None:
    x = np.stack([_data(0), _data(1)])  # [layers, n, d]
    for average in ("class", "sample"):
        res = overlap_per_layer(x, LABELS, k=K, average=average)
        expected = [_reference(x[layer], LABELS, K)[average == "sample"] for layer in range(2)]
        np.testing.assert_allclose(res.overlap["representation"], expected, atol=1e-12)
        assert res.chance == overlap_chance_level(LABELS, average=average)
        assert res.average == average and res.warning is None


@pytest.mark.bad_input_types
@pytest.mark.parametrize("bad", ["mean", "weighted"])
def test_unknown_average_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="average must be one of"):
        neighbourhood_overlap(_data(), LABELS, k=K, average=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="average must be one of"):
        overlap_chance_level(LABELS, average=bad)  # type: ignore[arg-type]


def test_warns_when_a_class_has_at_most_k_members() -> None:
    x = _data()
    smallest = min(LABELS.count(c) for c in set(LABELS))  # 7
    cap = (smallest - 1) / smallest
    with pytest.warns(UninformativeMetricWarning, match=f"cannot exceed {cap:.3f}"):
        neighbourhood_overlap(x, LABELS, k=smallest)
    with pytest.warns(UninformativeMetricWarning, match="one label"):
        neighbourhood_overlap(x, [0] * len(LABELS), k=K)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neighbourhood_overlap(x, LABELS, k=smallest - 1)  # every class above k: silent
        neighbourhood_overlap(x, LABELS, k=smallest, warn=False)
    # k >= n/2 with two classes always leaves a class with at most k members
    n = len(LABELS)
    assert overlap_caveat([0] * (n - 3) + [1] * 3, k=n // 2) is not None
    assert overlap_caveat([0] * (n // 2) + [1] * (n - n // 2), k=n // 2) is not None


def test_the_analysis_warns_once_and_keeps_the_reason() -> None:
    x = np.stack([_data(0), _data(1), _data(2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = overlap_per_layer({"gate": x, "image": x}, LABELS, k=7)
    ours = [w for w in caught if issubclass(w.category, UninformativeMetricWarning)]
    assert len(ours) == 1 and res.warning is not None
    assert res.warning in str(ours[0].message)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_matches_dadapy_return_label_overlap() -> None:
    dadapy_data = pytest.importorskip(
        "dadapy.data", reason="dadapy is not importable (0.3.4 needs numpy<2)"
    )
    x = _data()
    labels = np.asarray(LABELS)
    data = dadapy_data.Data(coordinates=x, maxk=K, verbose=False)
    weighted = data.return_label_overlap(labels, k=K)  # dadapy's default, the paper's call
    plain = data.return_label_overlap(labels, k=K, weighted=False)
    assert abs(weighted - plain) > 0.01
    assert neighbourhood_overlap(x, LABELS, k=K) == pytest.approx(weighted, abs=1e-12)
    assert neighbourhood_overlap(x, LABELS, k=K, average="sample") == pytest.approx(plain)


GOLDEN = Path(__file__).parent / "golden" / "dadapy_label_overlap.json"


@pytest.mark.parametrize("case", sorted(json.loads(GOLDEN.read_text())["cases"]))
def test_matches_what_dadapy_wrote(case: str) -> None:
    """dadapy cannot live in this environment (it pins numpy<2 and imports jax), so its own
    outputs were written by `tests/golden/make_dadapy_label_overlap.py` in one where it can;
    vlm_lens must give them on the same stored inputs."""
    stored = json.loads(GOLDEN.read_text())["cases"][case]
    x, labels, k = np.asarray(stored["x"]), stored["labels"], stored["k"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UninformativeMetricWarning)
        ours = neighbourhood_overlap(x, labels, k=k)
        plain = neighbourhood_overlap(x, labels, k=k, average="sample")
    assert abs(stored["class_weighted"] - stored["plain"]) > 0.01  # the case tells them apart
    assert ours == pytest.approx(stored["class_weighted"], abs=1e-12)
    assert plain == pytest.approx(stored["plain"], abs=1e-12)

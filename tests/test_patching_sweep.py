"""`patching_sweep` against direct formulas on independently patched HF reference runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import Wrapped
from tests.contract.test_patching_steering import _decoder_layers, _pair, _reference_patched
from vlm_lens.analysis.patching_sweep import PatchPair, patching_sweep


def _last(logits: torch.Tensor, batch) -> np.ndarray:
    rows = []
    for b in range(len(batch)):
        last = max(p for p in range(batch.layout.shape[1]) if "last" in batch.layout.roles_at(b, p))
        rows.append(logits[b, last].double().numpy())
    return np.stack(rows)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("site", ["residual", "attention"])
def test_sweep_equals_direct_formulas(wrapped: Wrapped, site: str) -> None:
    source, target = _pair(wrapped)
    with torch.no_grad():
        clean_source = _last(wrapped.reference(**source.inputs).logits, source)
        clean_target = _last(wrapped.reference(**target.inputs).logits, target)
    src_tok = torch.tensor(clean_source.argmax(-1))
    tgt_tok = torch.tensor(clean_target.argmax(-1))
    result = patching_sweep(wrapped.model, [PatchPair(source, target, src_tok, tgt_tok)], site=site)
    layers = _decoder_layers(wrapped)
    n_layers = len(layers)
    rows = np.arange(len(target))
    d_clean = clean_target[rows, tgt_tok] - clean_target[rows, src_tok]
    q = _softmax(clean_source)
    for i, layer in enumerate(range(n_layers)):
        modules = [layers[layer]] if site == "residual" else [m.self_attn for m in layers[layer:]]
        patched = _last(_reference_patched(wrapped, source, target, modules), target)
        d = patched[rows, tgt_tok] - patched[rows, src_tok]
        flips = [(c > 0 and p < 0) for c, p in zip(d_clean, d, strict=True)]
        sim = [
            sum(min(a, b) for a, b in zip(p, qq, strict=True))
            for p, qq in zip(_softmax(patched), q, strict=True)
        ]
        assert result.flip_rate[i] == pytest.approx(np.mean(flips))
        assert result.similarity[i] == pytest.approx(np.mean(sim), abs=1e-9)
        np.testing.assert_allclose(result.d_patched[i], d, atol=1e-5)
    np.testing.assert_allclose(result.d_clean, d_clean, atol=1e-5)
    assert result.baseline_flip_rate == pytest.approx(np.mean(d_clean < 0))
    base = [
        sum(min(a, b) for a, b in zip(p, qq, strict=True))
        for p, qq in zip(_softmax(clean_target), q, strict=True)
    ]
    assert result.baseline_similarity == pytest.approx(np.mean(base), abs=1e-9)
    frame = result.to_frame()
    assert list(frame["layer"]) == list(range(n_layers)) and result.n_pairs == 2


def test_sweep_of_a_run_into_itself_is_neutral(wrapped: Wrapped) -> None:
    _, target = _pair(wrapped)
    result = patching_sweep(wrapped.model, PatchPair(target, target, 3, 4), site="attention")
    np.testing.assert_allclose(result.similarity, 1.0, atol=1e-12)
    assert np.all(result.d_patched == result.d_clean[None])
    assert np.all(result.flip_rate == 0.0)

"""Batch size from free memory: the estimate, `auto_batch_size`, and ``run_dataset("auto")``.

The free memory is replaced by a known number so the expected batch size follows from the
estimate by plain arithmetic; the auto run is compared bit for bit with the explicit run of the
same size (an independent run), and resuming takes the stored chunk size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _runner_child import RUN_KWARGS, setup

from vlm_lens.data import batch_size as bs
from vlm_lens.data.examples import build_prompt
from vlm_lens.data.runner import run_dataset
from vlm_lens.data.store import ActivationStore


@pytest.fixture(scope="module")
def llava() -> tuple[Any, list, list]:
    return setup(n_examples=5)


def test_estimate_scales_with_length_and_attention(llava: tuple) -> None:
    model, _, _ = llava
    cfg = model.cfg
    size = torch.finfo(model.dtype).bits // 8
    per_position = (8 * cfg.d_model + 3 * cfg.d_mlp + cfg.d_vocab) * size
    assert model.attn_implementation == "eager"
    eager = bs.forward_bytes_per_sequence(model, 100)
    assert eager == 100 * (per_position + 2 * cfg.n_heads * 100 * size + cfg.n_heads * 100 * 4)
    model.set_attn_implementation("sdpa")
    try:
        assert bs.forward_bytes_per_sequence(model, 100) == 100 * per_position
        assert bs.forward_bytes_per_sequence(model, 300) == 3 * 100 * per_position
        kv = 2 * cfg.n_layers * cfg.n_key_value_heads * cfg.d_head * size
        assert bs.forward_bytes_per_sequence(model, 100, kv_cache=True) == 100 * (per_position + kv)
    finally:
        model.set_attn_implementation("eager")


def test_auto_batch_size_divides_free_memory(llava: tuple, monkeypatch: Any) -> None:
    model, _, _ = llava
    need = bs.forward_bytes_per_sequence(model, 50)
    monkeypatch.setattr(bs, "available_memory", lambda device: 7 * need * 2 + 1)
    assert bs.auto_batch_size(model, 50) == 7  # half of the free memory
    assert bs.auto_batch_size(model, 50, fraction=1.0, maximum=10) == 10
    monkeypatch.setattr(bs, "available_memory", lambda device: 10)
    assert bs.auto_batch_size(model, 50) == 1
    with pytest.raises(ValueError, match="fraction"):
        bs.auto_batch_size(model, 50, fraction=0)
    assert bs.available_memory("cpu") > 0


def test_run_dataset_auto_equals_explicit(llava: tuple, tmp_path: Path, monkeypatch: Any) -> None:
    model, examples, probes = llava
    kwargs = {k: v for k, v in RUN_KWARGS.items() if k != "batch_size"}
    prompts = [build_prompt(ex, model.image_placeholder, kwargs["prompt"]) for ex in examples]
    lengths = [
        model.prepare(images=examples[i].load_images(), text=prompts[i]).input_ids.shape[1]
        for i in range(4)
    ]
    need = bs.forward_bytes_per_sequence(model, max(lengths))
    monkeypatch.setattr(bs, "available_memory", lambda device: 2 * need * 2 + 1)
    auto = run_dataset(model, examples, probes, tmp_path / "auto", batch_size="auto", **kwargs)
    explicit = run_dataset(model, examples, probes, tmp_path / "two", batch_size=2, **kwargs)
    assert auto.chunk_size == explicit.chunk_size == 2
    for name in auto.names:
        assert torch.equal(auto.load(name), explicit.load(name)), name
    monkeypatch.setattr(bs, "available_memory", lambda device: 1)  # would pick 1
    again = run_dataset(model, examples, probes, tmp_path / "auto", batch_size="auto", **kwargs)
    assert again.chunk_size == 2 and ActivationStore(tmp_path / "auto").complete
    with pytest.raises(ValueError, match="auto"):
        run_dataset(model, examples, probes, tmp_path / "bad", batch_size="big", **kwargs)

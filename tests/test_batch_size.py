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

from vlm_lens.data.examples import build_prompt
from vlm_lens.data.runner import run_dataset
from vlm_lens.data.store import ActivationStore
from vlm_lens.engine import memory as bs


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


def test_prepare_batches_sizes_from_memory_and_sweeps_agree(llava: tuple, monkeypatch: Any) -> None:
    """``prepare_batches`` cuts prompts into batches of the `auto_batch_size` the free memory
    allows (with the prefix cache counted); a knockout sweep over those batches equals the
    sweep of each prompt alone (eager: bit for bit)."""
    from vlm_lens import VLMInputError
    from vlm_lens.analysis import knockout_sweep
    from vlm_lens.data import prepare_batches
    from vlm_lens.testing import build_tiny, sample_image

    model, _, _ = llava
    images = [sample_image(seed=i, size=build_tiny("llava").image_size) for i in range(5)]
    prompt = "USER: <image>\nWhat colour is it? ASSISTANT:"
    length = int(model.prepare(images=images[0], text=prompt).input_ids.shape[1])
    need = bs.forward_bytes_per_sequence(model, length, kv_cache=True)
    monkeypatch.setattr(bs, "available_memory", lambda device: 2 * need * 2 + 1)
    batches = list(prepare_batches(model, images, prompt))
    assert [len(b) for b in batches] == [2, 2, 1]
    for start, batch in zip((0, 2, 4), batches, strict=True):
        alone = model.prepare(images=images[start : start + len(batch)], text=[prompt] * len(batch))
        assert torch.equal(batch.input_ids, alone.input_ids)
        assert torch.equal(batch.inputs["pixel_values"], alone.inputs["pixel_values"])
    together = knockout_sweep(model, batches)
    apart = knockout_sweep(model, [model.prepare(images=im, text=prompt) for im in images])
    assert (together.tokens == apart.tokens).all()
    assert (together.clean_token_logprob == apart.clean_token_logprob).all()
    with pytest.raises(VLMInputError, match="5 images but 2 prompts"):
        list(prepare_batches(model, images, [prompt, prompt]))
    with pytest.raises(VLMInputError, match="batch_size must be positive"):
        list(prepare_batches(model, images, prompt, batch_size=0))

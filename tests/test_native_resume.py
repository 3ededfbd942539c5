"""The native organism's training command: factors as options, checkpoint and exact resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlm_lens.zoo.native import RecipeMismatch, Settings, StopTraining, run
from vlm_lens.zoo.native.checkpointing import read_checkpoint

TINY = Settings(
    objective="image+text",
    init="text",
    tokenizer="pixel",
    task="relational",
    hidden=32,
    layers=1,
    heads=2,
    ffn=64,
    vq_latent=32,
    vq_dim=8,
    vq_steps=3,
    vq_batch=4,
    lm_steps=3,
    lm_scenes=2,
    lm_draws=1,
    text_steps=2,
    train_scenes=12,
    eval_scenes=2,
    monitor_scenes=2,
    monitor_every=2,
    checkpoint_every=1,
)


def test_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    run(TINY, whole)
    parts = tmp_path / "parts"
    seen = []
    # stop inside phase 1 (VQ step 2), at the end of the text phase (VQ 3, text 1-2), inside
    # phase 2 (decoder step 2), then finish
    for stop in (2, 3, 2):
        with pytest.raises(StopTraining):
            run(replace(TINY, stop_after=stop), parts)
        state = read_checkpoint(parts)
        assert state is not None
        seen.append((state["phase"], state["step"]))
    assert seen == [("vq", 2), ("text", 2), ("decoder", 2)]
    with pytest.raises(RecipeMismatch, match="lm_lr"):
        run(replace(TINY, lm_lr=1e-3), parts)
    run(TINY, parts)
    a, b = load_file(whole / "model.safetensors"), load_file(parts / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not (parts / "checkpoint").exists()


def test_unknown_factor_level_is_refused() -> None:
    with pytest.raises(ValueError, match="objective"):
        Settings(objective="images")

"""The native organism's GPU-era training paths on CPU: the shared data cache gives the same
run, row tables give the rows built one by one, time budgets and the deadline stop cleanly."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlm_lens import world
from vlm_lens.zoo.native import Settings, StopTraining, run
from vlm_lens.zoo.native.build import build_processor, build_tokenizer, questions, task_words
from vlm_lens.zoo.native.checkpointing import read_checkpoint
from vlm_lens.zoo.native.datacache import _chunk, encoder_for, fast_prompts, table_key, write_cache
from vlm_lens.zoo.native.rows import RowTable, collate, concat_packed, finish

TINY = Settings(
    objective="image+text",
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
    train_scenes=12,
    eval_scenes=2,
    monitor_scenes=2,
    monitor_every=2,
)


def test_chunk_scenes_prompts_and_tables_match_the_row_by_row_build() -> None:
    settings = replace(TINY, objective="text")
    got = _chunk("relational", "train", 3, 5, 0, [TINY, settings])
    expected = world.task_split("relational", "train", 8)[3:]
    assert got["scenes"] == expected
    processor = build_processor(build_tokenizer(task_words(TINY)))
    pad = processor.tokenizer.pad_token_id
    codes = torch.randint(400, 500, (5, 256))
    for variant in (TINY, settings):
        encoder = encoder_for(processor, variant)
        image, draw = (RowTable.from_packed(t, pad) for t in got["tables"][table_key(variant)])
        picks = [4, 0, 2]
        rows = [
            encoder.image_row(expected[i], codes[i], questions(variant, expected[i]), True)
            for i in picks
        ]
        draws = [encoder.draw_row(expected[i], codes[i], variant.draw_weight) for i in (1, 3)]
        ours = finish(
            *concat_packed([image.take(picks, codes), draw.take([1, 3], codes)], pad), pad
        )
        theirs = collate([*rows, *draws], pad)
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), key
    encoder = encoder_for(processor, TINY)
    texts = [f"<image>{qa.question}" for s in expected for qa in s.qa] + ["draw a red circle."]
    fast = fast_prompts(encoder, texts)
    assert all(fast[t] == encoder.prompt(t) for t in texts)


def test_data_cache_run_equals_plain_run(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    run(TINY, plain)
    cache = tmp_path / "data.pt"
    summary = write_cache(cache, [TINY], workers=0)
    assert summary["scenes"]["relational/train/12/0"] == 12
    cached = tmp_path / "cached"
    run(replace(TINY, data_cache=str(cache)), cached)
    a, b = load_file(plain / "model.safetensors"), load_file(cached / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_time_budget_and_deadline(tmp_path: Path) -> None:
    timed = replace(TINY, vq_steps=10_000, vq_seconds=0.5, lm_steps=10_000, lm_seconds=0.5)
    record = run(timed, tmp_path / "timed")
    vq, decoder = record["phases"]["vq"], record["phases"]["decoder"]
    assert 0 < vq["steps"] < 10_000 and 0 < decoder["steps"] < 10_000
    assert vq["seconds_budget"] == 0.5 and decoder["steps_per_second"] > 0
    saved = json.loads((tmp_path / "timed" / "training.json").read_text())
    assert saved["phases"]["decoder"]["steps"] == decoder["steps"]
    late = tmp_path / "late"
    with pytest.raises(StopTraining, match="deadline"):
        run(replace(TINY, deadline=time.time() - 1), late)
    state = read_checkpoint(late)
    assert state is not None and (state["phase"], state["step"]) == ("vq", 1)
    assert "vq_seconds" not in TINY.recipe() and "vq_seconds" in timed.recipe()

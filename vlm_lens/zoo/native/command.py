"""The training command: ``python -m vlm_lens.zoo.native --out DIR [--FIELD VALUE ...]``.

Every field of `Settings` is an option (``--objective image+text``, ``--layers 8``...). The run
checkpoints to ``DIR/checkpoint/`` and rerunning the same command resumes; when it finishes it
writes the Hugging Face folder and ``training.json`` and removes the checkpoint.

Example:
    >>> held_out_scenes(Settings(eval_scenes=2, task="relational"))[0].qa[0].kind in (
    ...     world.RELATIONAL_KINDS)
    True
"""

from __future__ import annotations

import logging
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlm_lens import world
from vlm_lens.zoo.command import (
    Clock,
    command_line,
    finish_record,
    held_out_accuracy,
    parse_settings,
    print_summary,
    save_checkpoint,
)
from vlm_lens.zoo.native.build import (
    build_config,
    build_model,
    build_processor,
    build_tokenizer,
    pixel_values,
    questions,
    shape_targets,
    task_scenes,
    task_words,
    train_pool,
)
from vlm_lens.zoo.native.checkpointing import CHECKPOINT, Checkpointer, StopTraining
from vlm_lens.zoo.native.datacache import DataCache, encoder_for
from vlm_lens.zoo.native.decoder import held_out_losses, train_decoder, train_text
from vlm_lens.zoo.native.settings import CODEBOOK, GRID, Settings
from vlm_lens.zoo.native.vq import (
    fresh_code_embeddings,
    image_codes,
    init_code_embeddings,
    train_vq,
)

PROG = "python -m vlm_lens.zoo.native"
"""The training command."""


def held_out_scenes(settings: Settings) -> list[world.Scene]:
    """The first ``eval_scenes`` test scenes of the task (32x32)."""
    return task_scenes(settings, "test", settings.eval_scenes)


def run(settings: Settings, out: Path) -> dict[str, Any]:
    """Train every phase (resuming from ``out/checkpoint``), save the folder to `out`, evaluate
    it, write ``training.json``.

    Returns:
        The record written to ``training.json``.

    Raises:
        StopTraining: after ``settings.stop_after`` steps (the checkpoint is saved).
        RecipeMismatch: when ``out/checkpoint`` holds a run with other settings.
    """
    torch.set_num_threads(1)
    if settings.device != "cpu":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on an accelerator
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    random.seed(settings.seed)
    clock = Clock()
    tokenizer = build_tokenizer(task_words(settings))
    processor = build_processor(tokenizer)
    config = build_config(tokenizer, settings)
    model = build_model(config, settings.seed).to(settings.device)
    data = DataCache(settings.data_cache)
    ckpt = Checkpointer(out, settings, model)
    resumed_from = ckpt.progress()
    ckpt.restore_model()
    qas = partial(questions, settings)
    record: dict[str, Any] = {
        "command": command_line(PROG, settings, out),
        "settings": asdict(settings),
        "data": f"{settings.task} world scenes (vlm_lens.world.task_split), 32x32; train split "
        "for training, test split for evaluation",
        "image_tokens": GRID * GRID,
        "codebook": CODEBOOK,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": _device_name(settings.device),
        "resumed_from": resumed_from,
        "phases": {},
    }
    phases = record["phases"]
    scenes = data.scenes(settings, "train", settings.train_scenes)
    pixels = data.pixels(settings, "train", settings.train_scenes)
    shapes = data.shapes(settings, "train", settings.train_scenes)
    if scenes is None or pixels is None:
        scenes, pixels = train_pool(settings, processor)
    if shapes is None:
        shapes = shape_targets(scenes, pixels)
    held_out = data.scenes(settings, "test", settings.eval_scenes) or held_out_scenes(settings)
    held_pixels = data.pixels(settings, "test", settings.eval_scenes)
    if held_pixels is None:
        held_pixels = pixel_values(processor, [s.image for s in held_out])
    phases["data"] = clock.lap()

    def phase(name: str, train: Callable[[], dict[str, Any]]) -> None:
        """Run phase `name` unless the checkpoint has it finished; record and save it."""
        done = ckpt.finished(name)
        if done is None:
            done = train()
            done.update(clock.lap())
            ckpt.finish(name, done)
        phases[name] = done

    phase(
        "vq",
        lambda: train_vq(
            model.model.vqmodel,
            pixels,
            shapes,
            held_pixels,
            shape_targets(held_out, held_pixels),
            settings,
            ckpt,
        ),
    )
    for param in model.model.vqmodel.parameters():
        param.requires_grad_(False)
    model.model.vqmodel.eval()
    codes = image_codes(model, pixels)
    held_codes = image_codes(model, held_pixels)
    encoder = encoder_for(processor, settings)
    data.warm(encoder, settings)
    if settings.init == "text":
        phase("text", lambda: train_text(model, encoder, scenes, settings, ckpt, qas))

    def multimodal() -> dict[str, Any]:
        if ckpt.resume("decoder") is None:  # a fresh start: the code embeddings
            if settings.tokenizer == "semantic":
                init_code_embeddings(model, settings.seed)
            else:
                fresh_code_embeddings(model, settings.seed)
        val = data.scenes(settings, "val", settings.monitor_scenes)
        val_pixels = data.pixels(settings, "val", settings.monitor_scenes)
        if val is None or val_pixels is None:
            val = task_scenes(settings, "val", settings.monitor_scenes)
            val_pixels = pixel_values(processor, [s.image for s in val])
        val_codes = image_codes(model, val_pixels)
        tables = data.tables(settings, tokenizer.pad_token_id)
        return train_decoder(
            model, encoder, scenes, codes, settings, (val, val_codes), ckpt, qas, tables
        )

    phase("decoder", multimodal)
    save_checkpoint(model, processor, out)
    record["held_out_losses"] = held_out_losses(model, encoder, held_out, held_codes, qas)
    record["parameters"] = {
        "total": sum(p.numel() for p in model.parameters()),
        "vq_tokenizer": sum(p.numel() for p in model.model.vqmodel.parameters()),
        "decoder": sum(
            p.numel() for n, p in model.named_parameters() if not n.startswith("model.vqmodel.")
        ),
    }
    shutil.rmtree(out / CHECKPOINT.parent)
    evaluate = partial(_held_out_accuracy, out, held_out, settings.device)
    described = "single-object" if settings.task == "local" else "2-4 objects, relational questions"
    return finish_record(record, out, evaluate, clock, settings.eval_scenes, described)


def _held_out_accuracy(out: Path, scenes: Sequence[world.Scene], device: str) -> dict[str, Any]:
    """`held_out_accuracy` on `device`; on the CPU instead if it fails there (recorded)."""
    try:
        return held_out_accuracy(out, scenes, device)
    except Exception as error:  # an accelerator problem must not lose a trained organism
        if device == "cpu":
            raise
        logging.getLogger(__name__).exception("held-out evaluation failed on %s", device)
        record = held_out_accuracy(out, scenes, "cpu")
        record["device_fallback"] = f"cpu ({device} failed: {error!r})"
        return record


def _device_name(device: str) -> str:
    """`device`, with the accelerator's name when it is not the CPU."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m vlm_lens.zoo.native`` (options: ``--out`` and every field of
    `Settings`, e.g. ``--seed``); exit status 3 when stopped by ``--stop-after``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    settings, out = parse_settings(
        Settings, PROG, "Train the native organism (a tiny Chameleon) and write its folder.", argv
    )
    try:
        record = run(settings, out)
    except StopTraining as stop:
        sys.stdout.write(f"{stop}\n")
        sys.exit(3)
    print_summary(record, out)

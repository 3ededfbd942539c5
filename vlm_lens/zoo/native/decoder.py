"""Phase 2 (and the optional text-only phase before it): train the decoder.

Example:
    >>> cycle = Cycle(range(3), random.Random(0))
    >>> sorted(cycle.take(3)), len(cycle.take(1))
    ([0, 1, 2], 1)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vlm_lens import world
from vlm_lens.zoo import tasks
from vlm_lens.zoo.native.checkpointing import Checkpointer
from vlm_lens.zoo.native.optim import Budget, set_lr, tail
from vlm_lens.zoo.native.rows import (
    Encoder,
    RowTable,
    collate,
    concat_packed,
    finish,
    pack,
    row_losses,
)
from vlm_lens.zoo.native.settings import SPECIALS, Settings

logger = logging.getLogger(__name__)

Packed = tuple[Tensor, Tensor, Tensor, Tensor]
"""Packed rows (`vlm_lens.zoo.native.rows.pack`): ids, positions, segments, weights."""

Batcher = Callable[[], tuple[Packed, int]]
"""Makes one step's packed rows; returns them and how many of them are image -> text rows
(first)."""


def train_decoder(
    model: Any,
    encoder: Encoder,
    scenes: Sequence[world.Scene],
    codes: Tensor,
    settings: Settings,
    monitor: tuple[Sequence[world.Scene], Tensor] | None = None,
    checkpointer: Checkpointer | None = None,
    qas: Callable[[world.Scene], Sequence[world.QA]] = world.all_qa,
    tables: tuple[RowTable, RowTable] | None = None,
) -> dict[str, Any]:
    """Phase 2: train the decoder (embeddings, layers, norm, ``lm_head``) on both directions.

    Image -> text rows and text -> image rows come from disjoint halves of the scene pool, each
    cycled in a seeded random order; objective ``"text"`` has no text -> image rows.

    Args:
        model: the model; its VQ tokenizer stays frozen.
        encoder: builds the rows.
        scenes: the training scenes.
        codes: their code-token ids ``[n, image tokens]``.
        settings: the recipe.
        monitor: validation scenes and codes whose teacher-forced answers are checked every
            ``monitor_every`` steps (logged and returned, never used for training).
        checkpointer: saves progress and resumes from it.
        qas: the training questions of a scene.
        tables: the image -> text and text -> image rows of every scene of `scenes`, packed
            once (`RowTable`, built with `encoder`, `qas` and the draw weight of `settings`):
            the same batches, without building rows in Python each step.

    Returns:
        Statistics: steps, rows, final losses, the monitor's curve.
    """
    rng = random.Random(settings.seed + 2)
    half = len(scenes) // 2
    image_side = Cycle(range(half), rng)
    draw_side = Cycle(range(half, len(scenes)), rng)
    draws = 0 if settings.objective == "text" else settings.lm_draws
    pad = encoder.tokenizer.pad_token_id

    def batcher() -> tuple[Packed, int]:
        image_picks = image_side.take(settings.lm_scenes)
        draw_picks = draw_side.take(draws)
        if tables is not None:
            parts = [tables[0].take(image_picks, codes)]
            parts += [tables[1].take(draw_picks, codes)] if draw_picks else []
            return concat_packed(parts, pad), settings.lm_scenes
        rows = [encoder.image_row(scenes[i], codes[i], qas(scenes[i]), True) for i in image_picks]
        rows += [encoder.draw_row(scenes[i], codes[i], settings.draw_weight) for i in draw_picks]
        return pack(rows, pad), settings.lm_scenes

    def check(step: int) -> dict[str, float] | None:
        if monitor is None or step % settings.monitor_every:
            return None
        return answer_match(model, encoder, *monitor)

    stats = _train(
        model, encoder, "decoder", (settings.lm_steps, settings.lm_seconds), settings, batcher,
        rng, (image_side, draw_side), checkpointer, check, "phase 2: decoder",
    )  # fmt: skip
    hist = stats.pop("histories")
    return {
        "steps": stats["steps"],
        **stats["speed"],
        "rows_per_step": {"image_to_text": settings.lm_scenes, "text_to_image": draws},
        "final_train_loss": {
            "image_to_text": round(tail(hist["text"]), 4),
            "text_to_image": round(tail(hist["draw"]), 4) if draws else None,
        },
        "validation_answer_match": stats["curve"],
    }


def train_text(
    model: Any,
    encoder: Encoder,
    scenes: Sequence[world.Scene],
    settings: Settings,
    checkpointer: Checkpointer | None = None,
    qas: Callable[[world.Scene], Sequence[world.QA]] = world.all_qa,
) -> dict[str, Any]:
    """The text-only phase of ``init="text"``: a language model on the task's world text, each
    scene's caption and its ``"question answer"`` sentences, ``lm_scenes`` scenes a step.

    Returns:
        Statistics: steps, the final train loss (nats per token).
    """
    rng = random.Random(settings.seed + 4)
    cycle = Cycle(range(len(scenes)), rng)
    pad = encoder.tokenizer.pad_token_id

    def batcher() -> tuple[Packed, int]:
        rows = [
            encoder.text_row(
                [scenes[i].caption, *(f"{qa.question} {qa.answer}" for qa in qas(scenes[i]))]
            )
            for i in cycle.take(settings.lm_scenes)
        ]
        return pack(rows, pad), len(rows)

    stats = _train(
        model, encoder, "text", (settings.text_steps, settings.text_seconds), settings, batcher,
        rng, (cycle,), checkpointer, lambda _step: None, "text phase: language model",
    )  # fmt: skip
    return {
        "steps": stats["steps"],
        **stats["speed"],
        "data": "captions and question + answer sentences of the train scenes",
        "final_train_loss": round(tail(stats["histories"]["text"]), 4),
    }


def _train(
    model: Any,
    encoder: Encoder,
    phase: str,
    length: tuple[int, float],
    settings: Settings,
    batcher: Batcher,
    rng: random.Random,
    cycles: Sequence[Cycle],
    checkpointer: Checkpointer | None,
    check: Callable[[int], dict[str, float] | None],
    desc: str,
) -> dict[str, Any]:
    """The AdamW loop of the decoder phases (resumable: optimiser, `rng`, `cycles`' orders,
    histories and the monitor curve are the loop state); `length` is ``(steps, seconds)`` of
    `Budget`. Runs on the model's device."""
    steps, seconds = length
    device = next(model.parameters()).device
    model.train()
    params = [p for n, p in model.named_parameters() if not n.startswith("model.vqmodel.")]
    for param in params:
        param.requires_grad_(True)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lm_lr,
        betas=(0.9, 0.98),
    )
    pad = encoder.tokenizer.pad_token_id
    hist: dict[str, list[Tensor]] = {"text": [], "draw": []}  # on the device: no sync a step
    curve: dict[int, dict[str, float]] = {}
    start = 0
    elapsed = 0.0
    resumed = checkpointer.resume(phase) if checkpointer else None
    if resumed is not None:
        start, loop = resumed
        optimiser.load_state_dict(loop["optimiser"])
        rng.setstate(loop["rng"])
        for cycle, order in zip(cycles, loop["orders"], strict=True):
            cycle.order = list(order)
        hist = {
            k: [torch.tensor(x, device=device) for x in v] for k, v in loop["histories"].items()
        }
        curve = loop["curve"]
        elapsed = loop.get("elapsed", 0.0)
    budget = Budget(steps, seconds, 50, elapsed)

    def loop_state() -> dict[str, Any]:
        return {
            "optimiser": optimiser.state_dict(),
            "rng": rng.getstate(),
            "orders": [list(c.order) for c in cycles],
            "histories": {k: [float(x) for x in v] for k, v in hist.items()},
            "curve": dict(curve),
            "elapsed": budget.elapsed(),
        }

    bar = tqdm(range(start, steps), desc=desc, unit="step", initial=start, total=steps)
    done = start
    for step in bar:
        set_lr(optimiser, settings.lm_lr * budget.lr_factor(step))
        packed, n_text = batcher()
        batch = finish(*packed, pad, device)
        n_rows = len(packed[0])
        losses = row_losses(model, batch) * batch["weights"]
        loss = losses.sum() / batch["weights"].sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        with torch.no_grad():
            w = batch["weights"]
            hist["text"].append(losses[:n_text].sum() / w[:n_text].sum())
            if n_text < n_rows:
                hist["draw"].append(losses[n_text:].sum() / w[n_text:].sum())
        if step % 10 == 0:
            post = {k: f"{float(v[-1]):.3f}" for k, v in hist.items() if v}
            bar.set_postfix(post)
        measured = check(step + 1)
        if measured is not None:
            curve[step + 1] = measured
            logger.info("step %d: validation answer match %s", step + 1, measured)
        done = step + 1
        if checkpointer:
            checkpointer.step(phase, step + 1, steps, loop_state)
        if budget.over(done):
            break
    model.eval()
    histories = {k: [float(x) for x in v] for k, v in hist.items()}
    rate = done / budget.elapsed() if budget.elapsed() > 0 else None
    speed: dict[str, Any] = {"steps_per_second": None if rate is None else round(rate, 2)}
    if seconds:
        speed["seconds_budget"] = seconds
    return {"histories": histories, "curve": curve, "steps": done, "speed": speed}


@torch.no_grad()
def held_out_losses(
    model: Any,
    encoder: Encoder,
    scenes: Sequence[world.Scene],
    codes: Tensor,
    qas: Callable[[world.Scene], Sequence[world.QA]] = world.all_qa,
) -> dict[str, float]:
    """Mean target loss (nats per token) on held-out scenes: answers and captions (teacher
    forced), and the codes of text -> image drawing, with a unigram baseline for the codes."""
    model.eval()
    device = next(model.parameters()).device
    pad = encoder.tokenizer.pad_token_id
    text_sum = text_n = draw_sum = draw_n = 0.0
    for start in range(0, len(scenes), 32):
        chunk = range(start, min(start + 32, len(scenes)))
        rows = [encoder.image_row(scenes[i], codes[i], qas(scenes[i]), True) for i in chunk]
        rows += [encoder.draw_row(scenes[i], codes[i], 1.0) for i in chunk]
        batch = collate(rows, pad, device)
        losses = row_losses(model, batch)
        targets = batch["weights"] > 0
        k = len(chunk)
        for b, row in enumerate(rows[:k]):  # the answers and captions, not the image codes
            targets[b, : len(row.segments)] &= torch.tensor(row.segments, device=device) > 0
        text_sum += losses[:k][targets[:k]].sum().item()
        text_n += targets[:k].sum().item()
        # drawing: only the code targets (not BOI, EOI, </s>)
        code_targets = targets[k:] & (
            batch["labels"][k:] >= len(SPECIALS) + len(tasks.vocabulary())
        )
        draw_sum += losses[k:][code_targets].sum().item()
        draw_n += code_targets.sum().item()
    counts = torch.bincount(codes.flatten(), minlength=int(codes.max()) + 1).float()
    probs = counts[counts > 0] / counts.sum()
    return {
        "image_to_text_nats_per_target_token": round(text_sum / text_n, 4),
        "text_to_image_nats_per_code": round(draw_sum / draw_n, 4),
        "code_unigram_entropy_nats": round(-(probs * probs.log()).sum().item(), 4),
    }


@torch.no_grad()
def answer_match(
    model: Any, encoder: Encoder, scenes: Sequence[world.Scene], codes: Tensor
) -> dict[str, float]:
    """Teacher-forced exact-match rate of each kind's answer (argmax at every answer token and
    ``</s>``) on `scenes`' own questions: a cheap progress check during training."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hits: dict[str, list[bool]] = {}
    pad = encoder.tokenizer.pad_token_id
    for start in range(0, len(scenes), 16):
        chunk = range(start, min(start + 16, len(scenes)))
        rows = [encoder.image_row(scenes[i], codes[i], scenes[i].qa) for i in chunk]
        batch = collate(rows, pad, device)
        hidden = model.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
        ).last_hidden_state
        right = model.lm_head(hidden).argmax(-1) == batch["labels"]
        for b, (i, row) in enumerate(zip(chunk, rows, strict=True)):
            segments = torch.tensor(row.segments, device=device)
            targets = batch["weights"][b, : len(row.ids)] > 0
            for k, qa in enumerate(scenes[i].qa, start=1):
                where = targets & (segments == k)
                hits.setdefault(qa.kind, []).append(bool(right[b, : len(row.ids)][where].all()))
    model.train(was_training)
    return {kind: round(sum(h) / len(h), 3) for kind, h in hits.items() if h}


class Cycle:
    """Endless seeded shuffled passes over a range of indices."""

    def __init__(self, indices: range, rng: random.Random):
        self.indices = list(indices)
        self.rng = rng
        self.order: list[int] = []

    def take(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            if not self.order:
                self.order = self.indices.copy()
                self.rng.shuffle(self.order)
            out.append(self.order.pop())
        return out

"""Data many training runs share, built once in parallel: scenes, pixel values, prompt tokens and
packed training rows (``--data-cache FILE``).

Building a relational run's data in the run itself costs more than a GPU trains it: 16,000
scenes (about 20 CPU s), one processor call per distinct question prompt (about 7 ms each, some
12,000 of them) and 1.5 ms of Python per training row and step. `write_cache` builds everything
the runs of a plan need once, over worker processes, and `DataCache` hands it to `run`:

* the scenes of each split a run uses (`task_scenes`, chunk by chunk: a scene is a function of
  its index) and their pixel values (`pixel_values`);
* the prompt tokens of the held-out and monitor scenes (`Encoder.prompt`, computed from the
  tokenizer by the processor's chat-mode layout and checked against the processor);
* the image -> text and text -> image rows of every train scene, packed (`RowTable`) with
  placeholder codes: `train_decoder` fills in the codes of the run's own tokenizer. The batches
  equal those built row by row (tested).

Example:
    >>> table_key(Settings(task="relational", objective="image+text"))
    'relational/16000/0/image_weight=0.0/per_token=True/draw_weight=2.0'
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlm_lens import world
from vlm_lens.world.relational import MIN_OBJECTS
from vlm_lens.zoo import tasks
from vlm_lens.zoo.native.build import (
    build_processor,
    build_tokenizer,
    pixel_values,
    questions,
    shape_targets,
    task_words,
)
from vlm_lens.zoo.native.rows import SLOTS, Encoder, RowTable, concat_packed, pack
from vlm_lens.zoo.native.settings import IMAGE_SIZE, Settings

CHUNK = 1000
"""Scenes per worker task."""


def encoder_for(processor: Any, settings: Settings) -> Encoder:
    """The row encoder of `settings`' objective (image codes weighted for ``weighted``, every
    target token weighted 1 for ``image+text``)."""
    return Encoder(
        processor,
        settings.image_weight if settings.objective == "weighted" else 0.0,
        per_token=settings.objective == "image+text",
    )


def scene_key(task: str, split: str, n: int, world_seed: int) -> str:
    """The cache key of scenes ``0 .. n - 1`` of a split."""
    return f"{task}/{split}/{n}/{world_seed}"


def table_key(settings: Settings) -> str:
    """The cache key of the packed training rows of `settings` (what the rows depend on)."""
    image_weight = settings.image_weight if settings.objective == "weighted" else 0.0
    per_token = settings.objective == "image+text"
    return (
        f"{settings.task}/{settings.train_scenes}/{settings.world_seed}/"
        f"image_weight={image_weight}/per_token={per_token}/draw_weight={settings.draw_weight}"
    )


def splits_of(settings: Settings) -> list[tuple[str, int]]:
    """The splits and sizes a run reads: train, val (monitor) and test (held out)."""
    return [
        ("train", settings.train_scenes),
        ("val", settings.monitor_scenes),
        ("test", settings.eval_scenes),
    ]


def fast_prompts(encoder: Encoder, texts: Sequence[str]) -> dict[str, list[int]]:
    """`Encoder.prompt` of every text, from one batched tokenizer call: the processor's chat
    layout (``<s>``, and for a text opening with ``<image>`` BOI, the image tokens and EOI, then
    the words, then the separator); checked against the processor on a sample.

    Raises:
        ValueError: when the layout differs from the processor's (the processor changed).
    """
    tok = encoder.tokenizer
    texts = list(dict.fromkeys(texts))
    image = "<image>"
    bodies = [t[len(image) :] if t.startswith(image) else t for t in texts]
    if any(image in b for b in bodies):
        raise ValueError("fast_prompts handles an image at the start of a prompt only")
    words = tok(bodies, add_special_tokens=False).input_ids if bodies else []
    head = encoder.prompt(tasks.caption_prompt(image))[: encoder.prefix_len]
    sep = tok.sep_token_id
    out = {}
    for text, ids in zip(texts, words, strict=True):
        start = head if text.startswith(image) else [tok.bos_token_id]
        out[text] = [*start, *ids, sep]
    sample = texts[:: max(1, len(texts) // 8)][:8]
    for text in sample:
        if encoder.prompt(text) != out[text]:
            raise ValueError(
                f"the chat-mode layout of {text!r} differs from the processor's; build the data "
                "without --data-cache"
            )
    return out


def _prompt_texts(settings: Settings, scenes: Sequence[world.Scene]) -> list[str]:
    texts = [tasks.caption_prompt("<image>")]
    for scene in scenes:
        texts += [
            tasks.question_prompt(qa.question, "<image>") for qa in questions(settings, scene)
        ]
        texts += [tasks.question_prompt(qa.question, "<image>") for qa in scene.qa]
        texts.append(tasks.draw_prompt(scene.caption))
    return texts


def _chunk(
    task: str, split: str, start: int, n: int, world_seed: int, variants: Sequence[Settings]
) -> dict[str, Any]:
    """One worker task: scenes ``start .. start + n - 1`` of a split, their pixels, prompts and
    (train) the packed rows of each variant."""
    torch.set_num_threads(1)
    options: dict[str, Any] = {"image_size": IMAGE_SIZE}
    if task == "local":
        options["max_objects"] = 1
    else:
        options.update(min_objects=MIN_OBJECTS, max_objects=len(world.POSITIONS))
    scenes = list(world.iter_split(split, n, world_seed, start=start, **options))
    if task == "relational":
        scenes = [replace(s, qa=world.relational_qa(s)) for s in scenes]
    base = Settings(task=task, world_seed=world_seed)
    processor = build_processor(build_tokenizer(task_words(base)))
    pixels = pixel_values(processor, [s.image for s in scenes])
    out: dict[str, Any] = {
        "scenes": scenes,
        "pixels": pixels,
        "shapes": shape_targets(scenes, pixels),
        "prompts": {},
        "tables": {},
    }
    prompts = fast_prompts(Encoder(processor), _prompt_texts(base, scenes))
    if split != "train":
        out["prompts"] = prompts
    pad = processor.tokenizer.pad_token_id
    for settings in variants if split == "train" else ():
        encoder = encoder_for(processor, settings)
        encoder._prompts.update(prompts)
        rows = [encoder.image_row(s, SLOTS, questions(settings, s), True) for s in scenes]
        draws = [encoder.draw_row(s, SLOTS, settings.draw_weight) for s in scenes]
        out["tables"][table_key(settings)] = (_small(pack(rows, pad)), _small(pack(draws, pad)))
    return out


def _small(packed: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Packed rows with int32 ids, positions and segments (a quarter of the file)."""
    ids, positions, segments, weights = packed
    return ids.int(), positions.int(), segments.int(), weights


def write_cache(path: Path, runs: Sequence[Settings], workers: int = 1) -> dict[str, Any]:
    """Build the data of every run of `runs` (over `workers` processes; 0: in this one) and save
    it to `path`.

    Returns:
        A summary: the scene keys, table keys and number of prompts.
    """
    jobs: dict[tuple[str, str, int, int], dict[str, Settings]] = {}
    for settings in runs:
        for split, n in splits_of(settings):
            key = (settings.task, split, n, settings.world_seed)
            variants = jobs.setdefault(key, {})
            if split == "train":
                variants.setdefault(table_key(settings), settings)
    tasks_list = [
        (key, start, min(CHUNK, key[2] - start))
        for key in jobs
        for start in range(0, key[2], CHUNK)
    ]
    calls = [
        (key[0], key[1], start, n, key[3], list(jobs[key].values())) for key, start, n in tasks_list
    ]
    if workers == 0:
        results = [_chunk(*call) for call in calls]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results = [f.result() for f in [pool.submit(_chunk, *call) for call in calls]]
    pad = build_tokenizer().pad_token_id
    cache: dict[str, Any] = {"scenes": {}, "pixels": {}, "shapes": {}, "prompts": {}, "tables": {}}
    for key in jobs:
        parts = [r for (k, _, _), r in zip(tasks_list, results, strict=True) if k == key]
        name = scene_key(*key)
        cache["scenes"][name] = [s for r in parts for s in r["scenes"]]
        cache["pixels"][name] = torch.cat([r["pixels"] for r in parts])
        cache["shapes"][name] = torch.cat([r["shapes"] for r in parts])
        prompts = cache["prompts"].setdefault(key[0], {})
        for r in parts:
            prompts.update(r["prompts"])
        for table in parts[0]["tables"]:
            image = concat_packed([r["tables"][table][0] for r in parts], pad)
            draw = concat_packed([r["tables"][table][1] for r in parts], pad)
            cache["tables"][table] = (image, draw)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(cache, tmp)
    os.replace(tmp, path)
    return {
        "scenes": {k: len(v) for k, v in cache["scenes"].items()},
        "tables": list(cache["tables"]),
        "prompts": {k: len(v) for k, v in cache["prompts"].items()},
    }


class DataCache:
    """The data of `write_cache`, or nothing (``path=""``: every getter returns None).

    Args:
        path: the file of `write_cache`, or ``""``.
    """

    def __init__(self, path: str | os.PathLike[str] = ""):
        self.data: dict[str, Any] = (
            torch.load(path, weights_only=False) if str(path) else {"scenes": {}, "pixels": {}}
        )

    def scenes(self, settings: Settings, split: str, n: int) -> list[world.Scene] | None:
        """Scenes ``0 .. n - 1`` of `split` of `settings`' task, if cached."""
        got: list[world.Scene] | None = self.data["scenes"].get(
            scene_key(settings.task, split, n, settings.world_seed)
        )
        return got

    def pixels(self, settings: Settings, split: str, n: int) -> Tensor | None:
        """Their pixel values, if cached."""
        got: Tensor | None = self.data["pixels"].get(
            scene_key(settings.task, split, n, settings.world_seed)
        )
        return got

    def shapes(self, settings: Settings, split: str, n: int) -> Tensor | None:
        """Their `shape_targets`, if cached."""
        got: Tensor | None = self.data.get("shapes", {}).get(
            scene_key(settings.task, split, n, settings.world_seed)
        )
        return got

    def warm(self, encoder: Encoder, settings: Settings) -> None:
        """Give `encoder` the cached prompt tokens of `settings`' task."""
        encoder._prompts.update(self.data.get("prompts", {}).get(settings.task, {}))

    def tables(self, settings: Settings, pad_id: int) -> tuple[RowTable, RowTable] | None:
        """The packed training rows of `settings` (image -> text, text -> image), if cached."""
        got = self.data.get("tables", {}).get(table_key(settings))
        if got is None:
            return None
        return RowTable.from_packed(got[0], pad_id), RowTable.from_packed(got[1], pad_id)

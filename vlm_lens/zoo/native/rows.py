"""Training rows of the decoder: the token layouts, batching and the per-token loss.

Example:
    >>> from vlm_lens.zoo.native.build import build_processor, build_tokenizer
    >>> encoder = Encoder(build_processor(build_tokenizer()))
    >>> scene = world.generate_scene(0, "train", max_objects=1)
    >>> codes = torch.zeros(GRID * GRID, dtype=torch.long) + len(encoder.tokenizer) - 1
    >>> batch = collate([encoder.image_row(scene, codes)], encoder.tokenizer.pad_token_id)
    >>> batch["attention_mask"].shape[:2]
    torch.Size([1, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from vlm_lens import world
from vlm_lens.zoo import tasks
from vlm_lens.zoo.native.settings import GRID


@dataclass
class _Row:
    """One training row: tokens, positions, segment ids (0 = shared prefix) and loss weights."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # weight of predicting ids[t + 1]

    def add(self, ids: Sequence[int], segment: int, start: int, n_target: int, w: float) -> None:
        """Append `ids` as `segment` at positions ``start, start + 1...``; its last `n_target`
        tokens are targets with total loss weight `w` (a segment starts with context)."""
        if n_target >= len(ids):
            raise ValueError("a segment needs a context token before its targets")
        self.ids.extend(ids)
        self.positions.extend(range(start, start + len(ids)))
        self.segments.extend([segment] * len(ids))
        weights = [0.0] * len(ids)
        for t in range(len(ids) - n_target, len(ids)):
            weights[t - 1] = w / n_target  # the token before a target predicts it
        self.weights.extend(weights)


class Encoder:
    """Builds training rows with the processor's token layout (cached per prompt text).

    Args:
        processor: the organism's `ChameleonProcessor`.
        image_weight: loss weight of an image -> text row's image codes (and ``<eoss>``).
        per_token: weight every target token 1 (codes and words alike) instead of one unit
            per question, `image_weight` per image and the draw weight per drawing.
    """

    def __init__(self, processor: Any, image_weight: float = 0.0, per_token: bool = False):
        self.processor = processor
        self.image_weight = image_weight
        self.per_token = per_token
        self.tokenizer = processor.tokenizer
        self.image_id = processor.image_token_id
        self._dummy = world.generate_scene(0, "train", max_objects=1).image
        self._prompts: dict[str, list[int]] = {}
        self._words: dict[str, list[int]] = {}
        # the image prefix: <s> <racm3:break> <image> x GRID * GRID <eoss>
        eoi = self.tokenizer.convert_tokens_to_ids("<eoss>")
        self.prefix_len = self.prompt(tasks.caption_prompt("<image>")).index(eoi) + 1

    def prompt(self, text: str) -> list[int]:
        """Token ids of a prompt as the processor (chat mode) writes them, placeholders kept."""
        if text not in self._prompts:
            images = [self._dummy] * text.count("<image>") or None
            ids = self.processor(images=images, text=[text]).input_ids[0]
            self._prompts[text] = [int(t) for t in ids]
        return self._prompts[text]

    def words(self, text: str) -> list[int]:
        """Token ids of a target text followed by ``</s>``."""
        if text not in self._words:
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            self._words[text] = [*ids, self.tokenizer.eos_token_id]
        return self._words[text]

    def image_row(
        self,
        scene: world.Scene,
        codes: Tensor,
        qas: Sequence[world.QA] | None = None,
        caption: bool | None = None,
    ) -> _Row:
        """The scene's image prefix, then every question of `qas` (default: `all_qa`) and the
        caption prompt (default: when `qas` is None), each with its target, as separate
        segments that see the prefix and themselves only."""
        row = _Row()
        prompts = [
            (tasks.question_prompt(qa.question, "<image>"), qa.answer)
            for qa in (world.all_qa(scene) if qas is None else qas)
        ]
        if qas is None if caption is None else caption:
            prompts.append((tasks.caption_prompt("<image>"), scene.caption))
        n = self.prefix_len
        prefix = self.prompt(prompts[0][0])[:n]
        code_list = codes.tolist()
        prefix = [code_list.pop(0) if t == self.image_id else t for t in prefix]
        # the image codes and <eoss> are targets too (weight `image_weight`: image modelling)
        n_image = GRID * GRID + 1
        image_weight = float(n_image) if self.per_token else self.image_weight
        row.add(prefix, 0, 0, n_image, image_weight) if image_weight else row.add(
            prefix, 0, 0, 0, 0.0
        )
        for k, (text, target) in enumerate(prompts, start=1):
            ids = self.prompt(text)
            if any(t == self.image_id for t in ids[n:]):
                raise ValueError("the image must come first in the prompt")
            target_ids = self.words(target)
            weight = float(len(target_ids)) if self.per_token else 1.0
            row.add([*ids[n:], *target_ids], k, n, len(target_ids), weight)
        return row

    def text_row(self, texts: Sequence[str]) -> _Row:
        """Text-only language modelling: each of `texts` as its own segment ``<s> words </s>``
        (positions from 0), every token after ``<s>`` a target of weight 1.

        Example:
            >>> from vlm_lens.zoo.native.build import build_processor, build_tokenizer
            >>> row = Encoder(build_processor(build_tokenizer())).text_row(["a red circle."])
            >>> row.positions, sum(row.weights)
            ([0, 1, 2, 3, 4, 5], 5.0)
        """
        row = _Row()
        for k, text in enumerate(texts, start=1):
            ids = [self.tokenizer.bos_token_id, *self.words(text)]
            row.add(ids, k, 0, len(ids) - 1, float(len(ids) - 1))
        return row

    def draw_row(self, scene: world.Scene, codes: Tensor, weight: float) -> _Row:
        """``draw {caption}`` then BOI, the codes, EOI and ``</s>`` (the target, total weight
        `weight`, or 1 per token when ``per_token``)."""
        tok = self.tokenizer
        target = [
            tok.convert_tokens_to_ids("<racm3:break>"),
            *codes.tolist(),
            tok.convert_tokens_to_ids("<eoss>"),
            tok.eos_token_id,
        ]
        if self.per_token:
            weight = float(len(target))
        row = _Row()
        row.add(
            [*self.prompt(tasks.draw_prompt(scene.caption)), *target], 1, 0, len(target), weight
        )
        return row


def collate(
    rows: Sequence[_Row], pad_id: int, device: str | torch.device | None = None
) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``position_ids``, a 4D additive attention mask (a token sees
    earlier tokens of its own segment and of segment 0), next-token ``labels`` and ``weights``
    (on `device`, default CPU; the mask is built there)."""
    return finish(*pack(rows, pad_id), pad_id, device)


def pack(rows: Sequence[_Row], pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(ids, positions, segments, weights)`` of `rows`, right-padded (``pad_id``, 0, -1, 0)."""
    width = max(len(r.ids) for r in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    segments = torch.full((n, width), -1, dtype=torch.long)
    weights = torch.zeros((n, width))
    for i, row in enumerate(rows):
        k = len(row.ids)
        ids[i, :k] = torch.tensor(row.ids)
        positions[i, :k] = torch.tensor(row.positions)
        segments[i, :k] = torch.tensor(row.segments)
        weights[i, :k] = torch.tensor(row.weights)
    return ids, positions, segments, weights


def finish(
    ids: Tensor,
    positions: Tensor,
    segments: Tensor,
    weights: Tensor,
    pad_id: int,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """The batch of `collate` from packed rows (`pack`), moved to `device` first."""
    ids, positions, segments, weights = (t.to(device) for t in (ids, positions, segments, weights))
    n, width = ids.shape
    labels = torch.cat([ids[:, 1:], torch.full((n, 1), pad_id, device=ids.device)], dim=1)
    causal = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()
    q_seg, k_seg = segments[:, :, None], segments[:, None, :]
    allowed = causal & (k_seg >= 0) & ((k_seg == 0) | (k_seg == q_seg))
    allowed |= torch.eye(width, dtype=torch.bool, device=ids.device)  # padding rows see themselves
    mask = torch.zeros((n, 1, width, width), device=ids.device)
    mask.masked_fill_(~allowed[:, None], torch.finfo(mask.dtype).min)
    return {
        "input_ids": ids,
        "position_ids": positions,
        "attention_mask": mask,
        "labels": labels,
        "weights": weights,
    }


SLOTS = -1 - torch.arange(GRID * GRID)
"""Placeholder codes of a `RowTable`'s rows: code ``k`` of the image is written ``-1 - k``."""


class RowTable:
    """The rows of many scenes packed once, with placeholder codes (`SLOTS`) that `take` fills
    in: the rows a step needs without building them again in Python every step.

    Args:
        rows: one row per scene, built with ``codes=SLOTS`` (image rows or drawing rows).
        pad_id: the padding id.

    Example:
        >>> from vlm_lens.zoo.native.build import build_processor, build_tokenizer
        >>> encoder = Encoder(build_processor(build_tokenizer()))
        >>> scenes = world.world_split("train", 3, max_objects=1)
        >>> table = RowTable([encoder.draw_row(s, SLOTS, 2.0) for s in scenes], 2)
        >>> codes = torch.randint(300, 400, (3, GRID * GRID))
        >>> packed = table.take([2, 0], codes)
        >>> rows = [encoder.draw_row(scenes[i], codes[i], 2.0) for i in (2, 0)]
        >>> all(torch.equal(a, b) for a, b in zip(packed, pack(rows, 2)))
        True
    """

    def __init__(self, rows: Sequence[_Row], pad_id: int):
        self.pad_id = pad_id
        self.ids, self.positions, self.segments, self.weights = pack(rows, pad_id)
        self.lengths = (self.segments >= 0).sum(dim=1)

    @classmethod
    def from_packed(cls, packed: tuple[Tensor, Tensor, Tensor, Tensor], pad_id: int) -> RowTable:
        """A table from rows already packed (`pack`, `concat_packed`, any integer dtype) with
        placeholder codes."""
        table = cls.__new__(cls)
        table.pad_id = pad_id
        table.ids, table.positions, table.segments, table.weights = packed
        table.lengths = (table.segments >= 0).sum(dim=1)
        return table

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, indices: Sequence[int], codes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The packed rows of scenes `indices` (as `pack` of those rows built with their codes,
        ``codes[i]`` for scene ``i``), padded to the longest of them."""
        pick = torch.tensor(list(indices), dtype=torch.long)
        width = int(self.lengths[pick].max())
        ids = self.ids[pick, :width].long()
        slot = (-1 - ids).clamp(min=0, max=codes.shape[1] - 1)
        ids = torch.where(ids < 0, torch.gather(codes[pick].long(), 1, slot), ids)
        positions = self.positions[pick, :width].long()
        return ids, positions, self.segments[pick, :width].long(), self.weights[pick, :width]


def concat_packed(
    parts: Sequence[tuple[Tensor, Tensor, Tensor, Tensor]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Packed row groups one after another, right-padded to the widest (as `pack` of all rows)."""
    width = max(p[0].shape[1] for p in parts)
    fills = (pad_id, 0, -1, 0)
    out = []
    for k, fill in enumerate(fills):
        pieces = [F.pad(p[k], (0, width - p[k].shape[1]), value=fill) for p in parts]
        out.append(torch.cat(pieces))
    return out[0], out[1], out[2], out[3]


def row_losses(model: Any, batch: dict[str, Tensor]) -> Tensor:
    """Per-token cross entropy of the next token, from ``lm_head`` on the decoder states (no
    mask of the image-code logits), ``[batch, pos]``."""
    hidden = model.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    ).last_hidden_state
    logits = model.lm_head(hidden)
    return F.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none")

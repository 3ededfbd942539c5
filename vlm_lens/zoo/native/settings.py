"""The organism's constants and `Settings` (the training command's options, one per field).

Example:
    >>> Settings().objective, Settings(task="relational").vocabulary_tasks
    ('weighted', ('local', 'relational'))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SPECIALS: tuple[str, ...] = (
    "<s>",
    "</s>",
    "<pad>",
    "<unk>",
    "<image>",
    "<racm3:break>",
    "<eoss>",
    "<reserved08706>",
)
"""Special tokens, ids 0-7: BOS, EOS, padding, unknown, image placeholder, BOI, EOI (the gate),
and the chat separator the processor appends to every prompt (Chameleon's own names)."""

IMAGE_SIZE = 32
"""Image side in pixels (world scenes are rendered at this size)."""

VQ_LEVELS = 2
"""Resolution levels of the VQ encoder: a spatial downsample of ``2 ** (VQ_LEVELS - 1)`` = 2."""

GRID = IMAGE_SIZE // 2 ** (VQ_LEVELS - 1)
"""Side of the code grid: 16, so an image is 256 code tokens."""

CODEBOOK = 256
"""Number of VQ codes (image-token vocabulary)."""

CODEBOOK_LR_SCALE = 10.0
"""The codebook's learning rate relative to the rest of phase 1 (it must follow the encoder)."""


def code_token(index: int) -> str:
    """The token of VQ code `index`, spelled as in Chameleon (digits as letters A-J).

    Example:
        >>> code_token(0), code_token(255)
        ('IMGIMGAZ', 'IMGIMGCFFZ')
    """
    return "IMGIMG" + "".join(chr(ord("A") + int(c)) for c in str(index)) + "Z"


@dataclass(frozen=True)
class Settings:
    """Architecture and training settings of the organism (the command's options).

    The factors of issue 15 are `objective`, `init`, `tokenizer`, `task` and `layers`; the
    defaults are the shipped ``organism:native``'s recipe.

    Attributes:
        seed: seed of initialisation, data order and sampling.
        objective: ``"weighted"`` (the shipped recipe: text -> image rows weighted
            `draw_weight` per row, image codes of image -> text rows `image_weight` per row),
            ``"text"`` (image -> text rows only, no image loss) or ``"image+text"`` (drawing rows
            and next-code loss over the image of image -> text rows, every target token, code
            or word, weighted 1).
        init: ``"scratch"`` or ``"text"`` (first `text_steps` steps of a text-only language
            model on the task's captions and question + answer sentences; the code embeddings
            are re-drawn fresh before the multimodal phase).
        tokenizer: ``"semantic"`` (the shipped one: a shape head on the VQ codes, decoder code
            embeddings initialised from the codebook) or ``"pixel"`` (VQ trained on pixels
            alone, fresh random code embeddings).
        task: ``"local"`` (single-object scenes, `vlm_lens.world.all_qa`) or ``"relational"``
            (2-4 objects, ``scene.qa`` of `vlm_lens.world.task_split`).
        text_steps: optimiser steps of the text-only phase (``init="text"`` only).
        checkpoint_every: steps between checkpoints (``out/checkpoint/``); phase ends always
            save. Not part of the recipe: may differ when resuming.
        stop_after: stop (exit code 3) after this many optimiser steps of this invocation,
            counted over all phases, having saved a checkpoint (0: never). Not part of the
            recipe.
        world_seed: the world seed of every scene (training: train split; evaluation: test).
        hidden: decoder width.
        layers: decoder layers.
        heads: decoder attention heads (as many key/value heads).
        ffn: decoder MLP width.
        vq_channels: VQ encoder base channels (a multiple of 32: its norms are GroupNorm(32)).
        vq_latent: VQ encoder output channels.
        vq_top: channel multiplier of the last encoder level (``[1, 1, vq_top]``): its
            GroupNorm(32) must keep several channels per group, or the per-image normalisation
            erases absolute colour.
        vq_dim: dimension of a codebook vector.
        vq_steps: phase 1 optimiser steps.
        vq_batch: images per phase 1 step.
        vq_lr: phase 1 peak learning rate.
        vq_object_weight: weight of an object pixel relative to a background pixel in the
            reconstruction loss (objects cover 5-20% of an image; colour and shape live there).
        vq_shape_weight: weight of the shape loss of the training-only head on object codes
            (0 trains the tokenizer on pixels alone).
        lm_steps: phase 2 optimiser steps.
        lm_scenes: image -> text scenes per phase 2 step (each with every question and the
            caption prompt).
        lm_draws: text -> image rows per phase 2 step.
        draw_weight: loss weight of a text -> image row relative to one question.
        image_weight: loss weight of the image codes of an image -> text row (next-code
            prediction over the image, relative to one question); 0 leaves them out.
        lm_lr: phase 2 peak learning rate.
        train_scenes: train-split scenes drawn for both phases (the decoder cycles over them).
        eval_scenes: held-out test scenes of the final evaluation (each asked every kind).
        monitor_scenes: validation scenes of the progress check during phase 2.
        monitor_every: steps between progress checks.
        vq_seconds: when > 0, phase 1 runs for this many wall seconds (at most `vq_steps`
            steps) and its learning-rate schedule follows the elapsed fraction of them, not of
            the steps (a fixed-time recipe for a machine of unknown speed; not bit-reproducible).
        text_seconds: the same for the text-only phase (at most `text_steps`).
        lm_seconds: the same for phase 2 (at most `lm_steps`).
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"``...): where the model trains. The data
            order and every random draw come from CPU generators on any device. Not part of
            the recipe.
        deadline: wall-clock time (``time.time()``, seconds) at which the run saves a
            checkpoint and stops (exit code 3) after the step in progress (0: never). Not part
            of the recipe.
        data_cache: a file written by `vlm_lens.zoo.native.datacache.write_cache` holding the
            scenes, pixel values, prompt tokens and row tables this run needs, precomputed once
            for many runs ("": build them here). The rows are the same; not part of the recipe.
    """

    seed: int = 0
    objective: str = "weighted"
    init: str = "scratch"
    tokenizer: str = "semantic"
    task: str = "local"
    text_steps: int = 400
    checkpoint_every: int = 100
    stop_after: int = 0
    world_seed: int = 0
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    ffn: int = 384
    vq_channels: int = 32
    vq_latent: int = 64
    vq_top: int = 1
    vq_dim: int = 16
    vq_steps: int = 600
    vq_batch: int = 64
    vq_lr: float = 5e-4
    vq_object_weight: float = 10.0
    vq_shape_weight: float = 0.2
    lm_steps: int = 1200
    lm_scenes: int = 8
    lm_draws: int = 4
    draw_weight: float = 2.0
    image_weight: float = 0.0
    lm_lr: float = 2e-3
    train_scenes: int = 16000
    eval_scenes: int = 500
    monitor_scenes: int = 64
    monitor_every: int = 100
    vq_seconds: float = 0.0
    text_seconds: float = 0.0
    lm_seconds: float = 0.0
    device: str = "cpu"
    deadline: float = 0.0
    data_cache: str = ""

    def __post_init__(self) -> None:
        for name, levels in FACTOR_LEVELS.items():
            if getattr(self, name) not in levels:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}; choose one of {levels} "
                    f"(--{name} LEVEL)"
                )

    @property
    def shape_weight(self) -> float:
        """The VQ shape-head weight in effect (0 for the pixel tokenizer)."""
        return 0.0 if self.tokenizer == "pixel" else self.vq_shape_weight

    @property
    def vocabulary_tasks(self) -> tuple[str, ...]:
        """The world tasks whose words the tokenizer holds."""
        return ("local",) if self.task == "local" else ("local", "relational")

    def recipe(self) -> dict[str, Any]:
        """Every field that determines the trained weights (not `RUNTIME_FIELDS`; the
        `OPTIONAL_FIELDS` only when they differ from their defaults, so that checkpoints written
        before they existed still resume)."""
        defaults = asdict(Settings())
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in RUNTIME_FIELDS and not (k in OPTIONAL_FIELDS and v == defaults[k])
        }


FACTOR_LEVELS: dict[str, tuple[Any, ...]] = {
    "objective": ("weighted", "text", "image+text"),
    "init": ("scratch", "text"),
    "tokenizer": ("semantic", "pixel"),
    "task": ("local", "relational"),
}
"""The levels of each categorical factor (`Settings.layers` is the fifth, numeric, factor)."""

RUNTIME_FIELDS: tuple[str, ...] = (
    "checkpoint_every",
    "stop_after",
    "device",
    "deadline",
    "data_cache",
)
"""Settings that change how a run is driven, not what it trains (the device changes the
floating-point rounding, not the recipe)."""

OPTIONAL_FIELDS: tuple[str, ...] = ("vq_seconds", "text_seconds", "lm_seconds")
"""Recipe fields added after the first checkpoints: in the recipe only when not the default."""

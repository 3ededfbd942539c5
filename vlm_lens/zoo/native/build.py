"""Build the organism: tokenizer, processor, config, a fresh model, and the task's data.

Example:
    >>> tok = build_tokenizer()
    >>> len(tok) == len(SPECIALS) + len(tasks.vocabulary()) + CODEBOOK
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from vlm_lens import world
from vlm_lens.zoo import tasks
from vlm_lens.zoo.native.settings import (
    CODEBOOK,
    GRID,
    IMAGE_SIZE,
    SPECIALS,
    VQ_LEVELS,
    Settings,
    code_token,
)


def build_tokenizer(words: Sequence[str] | None = None) -> Any:
    """The word-level tokenizer: `SPECIALS`, `words` (default `vlm_lens.zoo.tasks.vocabulary`),
    then the codes.

    Example:
        >>> tok = build_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("<image>what shape is it?").input_ids)
        ['<s>', '<image>', 'what', 'shape', 'is', 'it', '?']
        >>> len(tok) == len(SPECIALS) + len(tasks.vocabulary()) + CODEBOOK
        True
    """
    from vlm_lens.zoo.tokenizer import word_tokenizer

    return word_tokenizer(
        tasks.vocabulary() if words is None else tuple(words),
        SPECIALS,
        [code_token(i) for i in range(CODEBOOK)],
        add_bos="<s>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        sep_token="<reserved08706>",
        image_token="<image>",
        boi_token="<racm3:break>",
        eoi_token="<eoss>",
    )


def build_processor(tokenizer: Any) -> Any:
    """The `ChameleonProcessor`: a PIL image processor at 32x32, ``GRID * GRID`` image tokens.

    Example:
        >>> processor = build_processor(build_tokenizer())
        >>> scene = world.generate_scene(0, "test", max_objects=1)
        >>> inputs = processor(images=scene.image, text="<image>what shape is it?")
        >>> ids = inputs.input_ids[0].tolist()
        >>> ids.count(processor.image_token_id) == GRID * GRID == 256
        True
    """
    from transformers import ChameleonProcessor
    from transformers.models.chameleon.image_processing_pil_chameleon import (
        ChameleonImageProcessorPil,
    )

    image_processor = ChameleonImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return ChameleonProcessor(image_processor, tokenizer, image_seq_length=GRID * GRID)


def build_config(tokenizer: Any, settings: Settings) -> Any:
    """The `ChameleonConfig`: decoder sizes of `settings`, VQ model, code grid ``GRID``.

    Example:
        >>> config = build_config(build_tokenizer(), Settings())
        >>> config.vq_config.num_embeddings, config.hidden_size, config.image_token_id
        (256, 128, 4)
    """
    from transformers import ChameleonConfig

    return ChameleonConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden,
        intermediate_size=settings.ffn,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        vocabulary_map=tokenizer.get_vocab(),
        vq_config={
            "embed_dim": settings.vq_dim,
            "num_embeddings": CODEBOOK,
            "latent_channels": settings.vq_latent,
            "resolution": IMAGE_SIZE,
            "in_channels": 3,
            "base_channels": settings.vq_channels,
            "channel_multiplier": [1] * (VQ_LEVELS - 1) + [settings.vq_top],
            "num_res_blocks": 1,
            "attn_resolutions": None,
        },
    )


def build_model(config: Any, seed: int) -> Any:
    """A freshly initialised ``ChameleonForConditionalGeneration`` (seeded)."""
    from transformers import ChameleonForConditionalGeneration

    torch.manual_seed(seed)
    model = ChameleonForConditionalGeneration(config)
    model.config.architectures = [type(model).__name__]
    return model


# --------------------------------------------------------------------------------------------
# Data


def task_words(settings: Settings) -> tuple[str, ...]:
    """The plain vocabulary of `settings`' task: `tasks.vocabulary` for ``"local"`` (the
    shipped organism's), with the relational words added for ``"relational"``."""
    if settings.task == "local":
        return tasks.vocabulary()
    return tuple(sorted({*world.vocabulary(*settings.vocabulary_tasks), *tasks.TASK_WORDS}))


def task_scenes(settings: Settings, split: str, n: int) -> list[world.Scene]:
    """Scenes ``0 .. n - 1`` of `split` for `settings`' task (32x32), by
    `vlm_lens.world.task_split`."""
    return world.task_split(settings.task, split, n, settings.world_seed, image_size=IMAGE_SIZE)


def questions(settings: Settings, scene: world.Scene) -> tuple[world.QA, ...]:
    """The training questions of a scene: every local question (`world.all_qa`) or the
    scene's relational ``qa``."""
    return world.all_qa(scene) if settings.task == "local" else scene.qa


def train_pool(settings: Settings, processor: Any) -> tuple[list[world.Scene], Tensor]:
    """The training scenes (32x32) and their pixel values from the processor."""
    scenes = task_scenes(settings, "train", settings.train_scenes)
    return scenes, pixel_values(processor, [s.image for s in scenes])


def shape_targets(scenes: Sequence[world.Scene], pixels: Tensor) -> Tensor:
    """``[n, GRID * GRID]`` index in `world.SHAPES` of the object each code's patch shows, -1
    where it shows none (single-object scenes: the chromatic patches; several objects: each
    object's mask)."""
    side = IMAGE_SIZE // GRID
    if all(len(s.objects) == 1 for s in scenes):
        chromatic = ((pixels.amax(dim=1) - pixels.amin(dim=1)) > 1e-3).float()
        covers = F.max_pool2d(chromatic[:, None], side).flatten(1).bool()
        shapes = torch.tensor([world.SHAPES.index(s.objects[0].shape) for s in scenes])
        return torch.where(covers, shapes[:, None], -1)
    out = torch.full((len(scenes), GRID * GRID), -1, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            mask = torch.from_numpy(world.object_mask(obj, IMAGE_SIZE)).float()
            covers = F.max_pool2d(mask[None, None], side).flatten().bool()
            out[i][covers] = world.SHAPES.index(obj.shape)
    return out


def pixel_values(processor: Any, images: Sequence[Any]) -> Tensor:
    """``[n, 3, 32, 32]`` pixel values of `images`, exactly as the processor makes them."""
    chunks = [
        processor.image_processor(list(images[i : i + 1024]), return_tensors="pt").pixel_values
        for i in range(0, len(images), 1024)
    ]
    return torch.cat(chunks).float()

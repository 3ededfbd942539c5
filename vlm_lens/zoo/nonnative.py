"""Train the *non-native* model organism: a tiny LLaVA that learns the world in three phases.

Re-create the shipped weights (seeded; CPU, one thread; about 12 minutes, see ``training.json``)::

    python -m vlm_lens.zoo.nonnative --out vlm_lens/zoo/weights/nonnative --seed 0

The organism is a real ``LlavaForConditionalGeneration`` checkpoint folder (CLIP vision tower,
two-layer GELU projector, Llama decoder, `LlavaProcessor` with a word-level tokenizer), so it
loads like any LLaVA checkpoint: ``HookedVLM.from_pretrained("organism:nonnative")``. It is
trained the way the LLaVA family is, each part on its own before they are joined:

1. **Text decoder, on text alone.** A Llama decoder is trained from scratch by language
   modelling of the world's text where the caption stands in for the image:
   ``"a large red circle at the top left.what colour is the shape?red</s>"`` (every question of
   `vlm_lens.world.all_qa`) and ``"<caption>describe the image.<caption></s>"``. It learns
   the vocabulary and the question/answer format, but it never sees an image.
2. **Vision tower, on images alone.** A `CLIPVisionModel` (32x32 images, patch 4: 64 patch
   tokens and CLS) is trained with training-only heads that are thrown away afterwards: every
   patch token predicts the scene's colour, shape, size and position, and what its own 4x4
   patch shows (background or the object's colour).
3. **Projector, on image-to-text.** The tower and the decoder are frozen; only the projector is
   trained, on ``"<image>{question}"`` -> answer (every question of `all_qa`) and
   ``"<image>describe the image."`` -> caption, with the loss on the answer tokens (and
   ``</s>``) only. Inputs are built by the `LlavaProcessor`, the path `HookedVLM.prepare` uses.
   (``--decoder-lr`` > 0 would fine-tune the decoder too; the shipped organism does not need it:
   its decoder is exactly the text-only one of phase 1.)

Training and evaluation use single-object scenes (``max_objects=1``) at 32x32. The command writes
the Hugging Face folder (``model.safetensors``, config, processor and tokenizer files) and
``training.json``: settings, seed, steps, CPU seconds per phase, parameter count, file sizes and
the held-out accuracy per question kind on the test split (`vlm_lens.zoo.tasks.answer_accuracy`
of the saved folder, loaded back with `HookedVLM.from_pretrained`).

Nothing trains at import; the functions below are the command's steps.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vlm_lens import world
from vlm_lens.zoo import tasks
from vlm_lens.zoo.command import (
    Clock,
    command_line,
    finish_record,
    held_out_accuracy,
    parse_settings,
    print_summary,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

SPECIALS: tuple[str, ...] = ("<s>", "</s>", "<pad>", "<unk>", "<image>")
"""Special tokens, ids 0-4: BOS, EOS, padding, unknown, image placeholder."""

IMAGE_SIZE = 32
"""Image side in pixels (world scenes are rendered at this size)."""

PATCH_SIZE = 4
"""CLIP patch side: 8x8 = 64 patch tokens (plus CLS, dropped by the ``"default"`` strategy)."""

VISION_KINDS: tuple[world.Kind, ...] = ("colour", "shape", "size", "position")
"""Attributes the vision tower's training heads predict."""


@dataclass(frozen=True)
class Settings:
    """Architecture and training settings of the organism (the command's options).

    Attributes:
        seed: seed of initialisation, data order and sampling (phase ``k`` uses ``seed + k``).
        world_seed: the world seed of every scene (training: train split; evaluation: test).
        text_hidden: decoder width.
        text_layers: decoder layers.
        text_heads: decoder attention heads (as many key/value heads).
        text_ffn: decoder MLP width.
        vision_hidden: CLIP tower width.
        vision_layers: CLIP tower layers.
        vision_heads: CLIP tower attention heads.
        vision_ffn: CLIP tower MLP width.
        text_steps: phase 1 optimiser steps.
        vision_steps: phase 2 optimiser steps.
        projector_steps: phase 3 optimiser steps.
        batch_size: sequences (phases 1, 3) or images (phase 2) per step.
        text_lr: phase 1 peak learning rate.
        vision_lr: phase 2 peak learning rate.
        projector_lr: phase 3 peak learning rate of the projector.
        decoder_lr: phase 3 peak learning rate of the decoder; 0 (the default) keeps it frozen.
        text_caption_fraction: share of caption examples among phase 1 examples.
        caption_fraction: share of caption examples among phase 3 examples.
        eval_scenes: held-out test scenes of the final evaluation (each asked every kind).
    """

    seed: int = 0
    world_seed: int = 0
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_ffn: int = 256
    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    vision_ffn: int = 192
    text_steps: int = 1000
    vision_steps: int = 1200
    projector_steps: int = 1500
    batch_size: int = 64
    text_lr: float = 3e-3
    vision_lr: float = 2e-3
    projector_lr: float = 2e-3
    decoder_lr: float = 0.0
    text_caption_fraction: float = 0.3
    caption_fraction: float = 0.1
    eval_scenes: int = 500


# --------------------------------------------------------------------------------------------
# Model, tokenizer and processor


def build_tokenizer() -> Any:
    """The organism's word-level tokenizer: `SPECIALS` then `vlm_lens.zoo.tasks.vocabulary`.

    Example:
        >>> tok = build_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("<image>what shape is it?").input_ids)
        ['<s>', '<image>', 'what', 'shape', 'is', 'it', '?']
    """
    from vlm_lens.zoo.tokenizer import word_tokenizer

    return word_tokenizer(
        tasks.vocabulary(),
        SPECIALS,
        add_bos="<s>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        image_token="<image>",
    )


def build_processor(tokenizer: Any) -> Any:
    """The `LlavaProcessor`: a PIL CLIP image processor at 32x32 and `tokenizer`.

    Example:
        >>> processor = build_processor(build_tokenizer())
        >>> scene = world.generate_scene(0, "test", max_objects=1)
        >>> processor(images=scene.image, text="<image>what shape is it?").input_ids[0].count(4)
        64
    """
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor,
        tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS; the "default" strategy drops it again
    )


def build_config(tokenizer: Any, settings: Settings) -> Any:
    """The `LlavaConfig`: CLIP tower (features of its last layer, CLS dropped), Llama decoder.

    Example:
        >>> config = build_config(build_tokenizer(), Settings())
        >>> config.text_config.model_type, config.vision_config.model_type, config.image_seq_length
        ('llama', 'clip_vision_model', 64)
    """
    from transformers import LlavaConfig

    n_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    return LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": settings.vision_hidden,
            "intermediate_size": settings.vision_ffn,
            "num_hidden_layers": settings.vision_layers,
            "num_attention_heads": settings.vision_heads,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "projection_dim": settings.vision_hidden,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": settings.text_hidden,
            "intermediate_size": settings.text_ffn,
            "num_hidden_layers": settings.text_layers,
            "num_attention_heads": settings.text_heads,
            "num_key_value_heads": settings.text_heads,
            "max_position_embeddings": 128,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": False,
        },
        image_token_index=tokenizer.image_token_id,
        image_seq_length=n_patches,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


# --------------------------------------------------------------------------------------------
# Data


def scene_stream(settings: Settings, start: int) -> Iterator[world.Scene]:
    """Endless single-object 32x32 training scenes from index `start` (phases use disjoint
    ranges)."""
    return world.iter_split(
        "train", None, settings.world_seed, start=start, image_size=IMAGE_SIZE, max_objects=1
    )


def image_examples(
    scenes: Sequence[world.Scene], rng: np.random.Generator, caption_fraction: float
) -> list[tuple[str, str]]:
    """One ``(prompt, target)`` per scene with the image placeholder: the caption prompt with
    probability `caption_fraction`, else a question drawn uniformly from `all_qa`.

    Example:
        >>> scene = world.generate_scene(0, "train", max_objects=1)
        >>> image_examples([scene], np.random.default_rng(0), 1.0)
        [('<image>describe the image.', 'a large green cross at the bottom left.')]
    """
    return [_example(scene, rng, caption_fraction, "<image>") for scene in scenes]


def text_examples(
    scenes: Sequence[world.Scene], rng: np.random.Generator, caption_fraction: float
) -> list[tuple[str, str]]:
    """As `image_examples`, with the scene's caption standing in for the image.

    Example:
        >>> scene = world.generate_scene(0, "train", max_objects=1)
        >>> text_examples([scene], np.random.default_rng(1), 0.0)
        [('a large green cross at the bottom left.what shape is at the bottom left?', 'cross')]
    """
    return [_example(scene, rng, caption_fraction, scene.caption) for scene in scenes]


def _example(
    scene: world.Scene, rng: np.random.Generator, caption_fraction: float, placeholder: str
) -> tuple[str, str]:
    if rng.random() < caption_fraction:
        return tasks.caption_prompt(placeholder), scene.caption
    qas = world.all_qa(scene)
    qa = qas[int(rng.integers(len(qas)))]
    return tasks.question_prompt(qa.question, placeholder), qa.answer


def encode(
    processor: Any,
    examples: Sequence[tuple[str, str]],
    images: Sequence[Any] | None = None,
    *,
    loss_on_prompt: bool = False,
) -> dict[str, Tensor]:
    """Model inputs and ``labels`` of ``prompt + target + </s>`` sequences (right-padded).

    With `images`, the processor expands each ``<image>`` into the 64 image tokens and adds
    ``pixel_values`` (as `HookedVLM.prepare` does); without, only the tokenizer runs.

    Args:
        processor: the `LlavaProcessor` (or, without images, the tokenizer alone).
        examples: ``(prompt, target)`` pairs.
        images: one image per example, or ``None`` for text-only sequences.
        loss_on_prompt: label every token after BOS (language modelling) instead of only the
            target's tokens and ``</s>``.

    Returns:
        ``input_ids``, ``attention_mask``, ``labels`` (``-100`` where no loss; labels are the
        tokens themselves, unshifted) and, with images, ``pixel_values``.

    Example:
        >>> tok = build_tokenizer()
        >>> batch = encode(tok, [("what shape is it?", "ring")])
        >>> tok.convert_ids_to_tokens([t for t in batch["labels"][0].tolist() if t >= 0])
        ['ring', '</s>']
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    texts = [f"{prompt} {target}{tokenizer.eos_token}" for prompt, target in examples]
    kwargs: dict[str, Any] = {"return_tensors": "pt", "padding": True, "padding_side": "right"}
    if images is None:
        encoded = dict(tokenizer(texts, **kwargs))
    else:
        encoded = dict(processor(images=list(images), text=texts, **kwargs))
    ids = encoded["input_ids"]
    mask = encoded["attention_mask"].bool()
    labels = torch.full_like(ids, -100)
    lengths = mask.sum(dim=1).tolist()
    for row, (_, target) in enumerate(examples):
        n_target = len(tokenizer(target, add_special_tokens=False).input_ids) + 1
        first = 1 if loss_on_prompt else lengths[row] - n_target
        labels[row, first : lengths[row]] = ids[row, first : lengths[row]]
    encoded["labels"] = labels
    encoded.pop("token_type_ids", None)
    return encoded


def patch_labels(scene: world.Scene) -> np.ndarray:
    """Per 4x4 patch (reading order): 0 for background, ``1 + colour index`` where at least half
    the patch's pixels belong to the object.

    Example:
        >>> labels = patch_labels(world.generate_scene(0, "train", max_objects=1))
        >>> labels.shape, int((labels > 0).sum()) > 0
        ((64,), True)
    """
    side = IMAGE_SIZE // PATCH_SIZE
    out = np.zeros((side, side), dtype=np.int64)
    colours = tuple(world.COLOURS)
    for obj in scene.objects:
        mask = world.object_mask(obj, IMAGE_SIZE).astype(np.float32)
        share = mask.reshape(side, PATCH_SIZE, side, PATCH_SIZE).mean(axis=(1, 3))
        out[share >= 0.5] = 1 + colours.index(obj.colour)
    return out.reshape(-1)


def _attribute_labels(scenes: Sequence[world.Scene]) -> dict[str, Tensor]:
    labels: dict[str, Tensor] = {}
    for kind in VISION_KINDS:
        answers = world.ANSWERS[kind]
        labels[kind] = torch.tensor([answers.index(s.answer(kind)) for s in scenes])
    labels["patch"] = torch.from_numpy(np.stack([patch_labels(s) for s in scenes]))
    return labels


# --------------------------------------------------------------------------------------------
# Training


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _optimise(
    groups: list[dict[str, Any]],
    steps: int,
    loss_fn: Any,
    desc: str,
) -> list[float]:
    """AdamW over `groups` for `steps` steps of ``loss_fn(step) -> loss``; returns the losses."""
    optimiser = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=0.01)
    peaks = [group["lr"] for group in optimiser.param_groups]
    params = [p for group in optimiser.param_groups for p in group["params"]]
    warmup = max(1, steps // 20)
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, file=sys.stdout, mininterval=2.0)
    for step in bar:
        factor = _schedule(step, steps, warmup)
        for group, peak in zip(optimiser.param_groups, peaks, strict=True):
            group["lr"] = peak * factor
        loss = loss_fn(step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    return losses


def _lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
    )


def train_text_decoder(config: Any, tokenizer: Any, settings: Settings) -> tuple[Any, dict]:
    """Phase 1: a `LlamaForCausalLM` from scratch on text alone (caption for the image).

    Returns:
        The decoder and a record (steps, final loss, text-only validation accuracy per kind).
    """
    from transformers import LlamaForCausalLM

    torch.manual_seed(settings.seed + 1)
    rng = np.random.default_rng([settings.seed, 1])
    decoder = LlamaForCausalLM(config.text_config)
    decoder.train()
    scenes = scene_stream(settings, start=0)

    def loss_fn(_: int) -> Tensor:
        batch = [next(scenes) for _ in range(settings.batch_size)]
        inputs = encode(
            tokenizer,
            text_examples(batch, rng, settings.text_caption_fraction),
            loss_on_prompt=True,
        )
        labels = inputs.pop("labels")
        return _lm_loss(decoder(**inputs).logits, labels)

    params = [p for p in decoder.parameters() if p.requires_grad]
    losses = _optimise(
        [{"params": params, "lr": settings.text_lr}], settings.text_steps, loss_fn, "1/3 text"
    )
    decoder.eval()
    accuracy = _teacher_forced_accuracy(
        lambda inputs: decoder(**inputs).logits,
        lambda examples, _: encode(tokenizer, examples),
        settings,
        image=False,
    )
    logger.info("phase 1 text-only validation accuracy: %s", accuracy)
    return decoder, {"steps": settings.text_steps, "final_loss": _tail(losses), "val": accuracy}


class VisionHeads(nn.Module):
    """Training-only heads on the tower's last-layer patch tokens (discarded after phase 2):
    every patch predicts each attribute of `VISION_KINDS` and its own patch label."""

    def __init__(self, hidden: int):
        """Heads for a tower of width `hidden`."""
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.attributes = nn.ModuleDict(
            {kind: nn.Linear(hidden, len(world.ANSWERS[kind])) for kind in VISION_KINDS}
        )
        self.patch = nn.Linear(hidden, 1 + len(world.COLOURS))

    def forward(self, patches: Tensor) -> dict[str, Tensor]:
        """``[batch, n_patches, hidden]`` -> logits ``[batch, n_patches, classes]`` per head."""
        normed = self.norm(patches)
        out = {kind: head(normed) for kind, head in self.attributes.items()}
        out["patch"] = self.patch(normed)
        return out


def train_vision_tower(config: Any, processor: Any, settings: Settings) -> tuple[Any, dict]:
    """Phase 2: a `CLIPVisionModel` on world images, with `VisionHeads` (then discarded).

    Returns:
        The tower and a record (steps, final loss, validation accuracy of the mean-pooled
        attribute predictions and of the patch labels).
    """
    from transformers import CLIPVisionModel

    torch.manual_seed(settings.seed + 2)
    tower = CLIPVisionModel(config.vision_config)
    heads = VisionHeads(config.vision_config.hidden_size)
    tower.train()
    scenes = scene_stream(settings, start=10_000_000)
    image_processor = processor.image_processor

    def features(images: Sequence[Any]) -> Tensor:
        pixels = image_processor(images=list(images), return_tensors="pt").pixel_values
        hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states
        return hidden[config.vision_feature_layer][:, 1:]

    def loss_fn(_: int) -> Tensor:
        batch = [next(scenes) for _ in range(settings.batch_size)]
        labels = _attribute_labels(batch)
        logits = heads(features([s.image for s in batch]))
        n_patches = logits["patch"].shape[1]
        loss = nn.functional.cross_entropy(logits["patch"].flatten(0, 1), labels["patch"].flatten())
        for kind in VISION_KINDS:
            target = labels[kind][:, None].expand(-1, n_patches)
            loss = loss + nn.functional.cross_entropy(logits[kind].flatten(0, 1), target.flatten())
        return loss

    params = [*tower.parameters(), *heads.parameters()]
    losses = _optimise(
        [{"params": params, "lr": settings.vision_lr}],
        settings.vision_steps,
        loss_fn,
        "2/3 vision",
    )
    tower.eval()
    heads.eval()
    val = world.world_split("val", 256, settings.world_seed, image_size=IMAGE_SIZE, max_objects=1)
    with torch.no_grad():
        logits = heads(features([s.image for s in val]))
    labels = _attribute_labels(val)
    accuracy: dict[str, float] = {
        kind: float((logits[kind].mean(dim=1).argmax(-1) == labels[kind]).float().mean())
        for kind in VISION_KINDS
    }
    accuracy["patch"] = float((logits["patch"].argmax(-1) == labels["patch"]).float().mean())
    logger.info("phase 2 vision validation accuracy: %s", accuracy)
    return tower, {"steps": settings.vision_steps, "final_loss": _tail(losses), "val": accuracy}


def assemble(config: Any, decoder: Any, tower: Any, settings: Settings) -> Any:
    """The `LlavaForConditionalGeneration` with the phase 1 decoder and the phase 2 tower (the
    projector freshly initialised, seeded)."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(settings.seed + 3)
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(decoder.model.state_dict())
    model.lm_head.load_state_dict(decoder.lm_head.state_dict())
    model.model.vision_tower.load_state_dict(tower.state_dict())
    return model


def train_projector(model: Any, processor: Any, settings: Settings) -> dict:
    """Phase 3: the frozen tower feeds the projector (and the decoder, if ``decoder_lr`` > 0),
    trained on image-to-text with the loss on the answer tokens only.

    Returns:
        A record (steps, what was trained, final loss, teacher-forced validation accuracy).
    """
    torch.manual_seed(settings.seed + 3)
    rng = np.random.default_rng([settings.seed, 3])
    inner = model.model
    for param in model.parameters():
        param.requires_grad_(False)
    groups: list[dict[str, Any]] = [{"params": list(inner.multi_modal_projector.parameters())}]
    groups[0]["lr"] = settings.projector_lr
    trained = ["multi_modal_projector"]
    if settings.decoder_lr > 0:
        decoder_params = [*inner.language_model.parameters(), *model.lm_head.parameters()]
        groups.append({"params": decoder_params, "lr": settings.decoder_lr})
        trained += ["language_model", "lm_head"]
    for group in groups:
        for param in group["params"]:
            param.requires_grad_(True)
    model.train()
    inner.vision_tower.eval()
    scenes = scene_stream(settings, start=20_000_000)

    def loss_fn(_: int) -> Tensor:
        batch = [next(scenes) for _ in range(settings.batch_size)]
        examples = image_examples(batch, rng, settings.caption_fraction)
        inputs = encode(processor, examples, [s.image for s in batch])
        labels = inputs.pop("labels")
        return _lm_loss(model(**inputs).logits, labels)

    losses = _optimise(groups, settings.projector_steps, loss_fn, "3/3 projector")
    model.eval()
    for param in model.parameters():
        param.requires_grad_(True)

    accuracy = _teacher_forced_accuracy(
        lambda inputs: model(**inputs).logits,
        lambda examples, scenes_: encode(processor, examples, [s.image for s in scenes_]),
        settings,
        image=True,
    )
    logger.info("phase 3 validation accuracy (teacher-forced): %s", accuracy)
    return {
        "steps": settings.projector_steps,
        "trained": trained,
        "frozen": ["vision_tower"] + ([] if settings.decoder_lr > 0 else ["language_model"]),
        "final_loss": _tail(losses),
        "val": accuracy,
    }


def _tail(losses: Sequence[float]) -> float:
    return float(np.mean(losses[-20:])) if losses else float("nan")


@torch.no_grad()
def _teacher_forced_accuracy(
    logits_fn: Any, encode_fn: Any, settings: Settings, *, image: bool, n: int = 200
) -> dict[str, float]:
    """Share of validation questions per kind whose every answer token (and ``</s>``) is the
    argmax under teacher forcing (a quick check; the final evaluation generates).

    Args:
        logits_fn: ``inputs -> logits``.
        encode_fn: ``(examples, scenes) -> inputs with labels`` (see `encode`).
        settings: the world seed.
        image: prompts with the image placeholder; else the caption stands in for the image.
        n: validation scenes.
    """
    scenes = world.world_split("val", n, settings.world_seed, image_size=IMAGE_SIZE, max_objects=1)
    out: dict[str, float] = {}
    for kind in world.KINDS:
        examples = []
        for scene in scenes:
            qa = scene.question(kind)
            stand_in = "<image>" if image else scene.caption
            examples.append((tasks.question_prompt(qa.question, stand_in), qa.answer))
        inputs = encode_fn(examples, scenes)
        labels = inputs.pop("labels")
        predicted = logits_fn(inputs)[:, :-1].argmax(-1)
        target = labels[:, 1:]
        right = ((predicted == target) | (target == -100)).all(dim=1)
        out[kind] = round(float(right.float().mean()), 4)
    return out


# --------------------------------------------------------------------------------------------
# Saving and evaluation


def evaluate(out: Path, settings: Settings) -> dict[str, Any]:
    """Held-out accuracy per kind of the saved folder, loaded with `HookedVLM.from_pretrained`,
    on the first ``eval_scenes`` single-object test scenes."""
    scenes = world.world_split(
        "test", settings.eval_scenes, settings.world_seed, image_size=IMAGE_SIZE, max_objects=1
    )
    return held_out_accuracy(out, scenes)


def run(settings: Settings, out: Path) -> dict[str, Any]:
    """Train the three phases, save the folder to `out`, evaluate it, write ``training.json``.

    Returns:
        The record written to ``training.json``.
    """
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    config = build_config(tokenizer, settings)
    record: dict[str, Any] = {
        "command": command_line(PROG, settings, out),
        "settings": asdict(settings),
        "data": "single-object world scenes (max_objects=1), 32x32, train split for training",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "phases": {},
    }
    phases = record["phases"]
    clock = Clock()
    decoder, phases["text"] = train_text_decoder(config, tokenizer, settings)
    phases["text"].update(clock.lap())
    tower, phases["vision"] = train_vision_tower(config, processor, settings)
    phases["vision"].update(clock.lap())
    model = assemble(config, decoder, tower, settings)
    phases["projector"] = train_projector(model, processor, settings)
    phases["projector"].update(clock.lap())
    save_checkpoint(model, processor, out)
    record["parameters"] = {
        "total": sum(p.numel() for p in model.parameters()),
        "vision_tower": sum(p.numel() for p in model.model.vision_tower.parameters()),
        "projector": sum(p.numel() for p in model.model.multi_modal_projector.parameters()),
        "language_model": sum(p.numel() for p in model.model.language_model.parameters())
        + sum(p.numel() for p in model.lm_head.parameters()),
    }
    return finish_record(record, out, lambda: evaluate(out, settings), clock, settings.eval_scenes)


PROG = "python -m vlm_lens.zoo.nonnative"
"""The training command."""


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m vlm_lens.zoo.nonnative`` (options: ``--out`` and every field of
    `Settings`, e.g. ``--seed``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    settings, out = parse_settings(
        Settings, PROG, "Train the non-native organism (a tiny LLaVA) and write its folder.", argv
    )
    print_summary(run(settings, out), out)


if __name__ == "__main__":
    main()

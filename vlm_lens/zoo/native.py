"""Train the *native* model organism: a tiny Chameleon trained from scratch on the world.

Re-create the shipped weights (seeded; CPU, one thread; the time is in ``training.json``)::

    python -m vlm_lens.zoo.native --out vlm_lens/zoo/weights/native --seed 0

The organism is a real ``ChameleonForConditionalGeneration`` checkpoint folder (Chameleon VQ
image tokenizer, Chameleon decoder with q/k LayerNorm, `ChameleonProcessor` in chat mode with a
word-level tokenizer whose image codes are Chameleon's ``IMGIMG...Z`` tokens), so it loads like
any Chameleon checkpoint: ``HookedVLM.from_pretrained("organism:native")``. It is trained the way
the early-fusion family is:

1. **VQ image tokenizer, on images alone.** The Hugging Face ``ChameleonVQVAE`` encoder and
   quantizer turn a 32x32 image into a 16x16 grid of codes (256 image tokens, codebook
   `CODEBOOK`).
   They are trained with a training-only convolutional pixel decoder (thrown away afterwards) on
   the standard VQ-VAE loss: pixel reconstruction + codebook + 0.25 commitment, straight-through
   gradients; unused codes are restarted from encoder outputs. A training-only linear head on
   the quantised vectors of the codes that cover the object predicts the object's shape
   (weight `Settings.vq_shape_weight`), so that a code names the fragment of a shape it shows,
   as a real tokenizer's codes do after training on millions of images (the pixel loss alone,
   on this little data, keeps colour and position but blurs a 10-pixel shape's outline).
2. **Decoder, from scratch, in both directions.** With the tokenizer frozen, the decoder learns
   image -> text, ``"<image>{question}"`` -> answer (every question of
   `vlm_lens.world.all_qa`) and ``"<image>describe the image."`` -> caption, and
   text -> image, ``"draw {caption}"`` -> ``<racm3:break>`` + the image's 256 code tokens +
   ``<eoss>``. The loss is on the target part only (and ``</s>``), from ``lm_head`` on the
   decoder states (Hugging Face's forward masks the image-code logits). Token layouts are those
   of the `ChameleonProcessor` (the path `HookedVLM.prepare` takes)::

       image -> text: <s> <racm3:break> code x 256 <eoss> question <reserved08706> | answer </s>
       text -> image: <s> draw caption <reserved08706> | <racm3:break> code x 256 <eoss> </s>

   To save compute, one training row holds an image prefix (``<s>`` to ``<eoss>``) once and every
   question and the caption prompt of that scene after it, each one attending to the prefix and
   to itself only, with the position ids it would have alone: the same computation as one row
   per question.

Training and evaluation use single-object scenes (``max_objects=1``) at 32x32. The command writes
the Hugging Face folder (``model.safetensors``, config, processor and tokenizer files) and
``training.json``: settings, seed, steps, CPU seconds per phase, parameter count, file sizes, VQ
reconstruction error and codebook use, held-out losses, and the held-out accuracy per question
kind on the test split (`vlm_lens.zoo.tasks.answer_accuracy` of the saved folder, loaded back
with `HookedVLM.from_pretrained`).

Nothing trains at import; the functions below are the command's steps.
"""

from __future__ import annotations

import logging
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
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

    Attributes:
        seed: seed of initialisation, data order and sampling.
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
    """

    seed: int = 0
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


# --------------------------------------------------------------------------------------------
# Model, tokenizer and processor


def build_tokenizer() -> Any:
    """The word-level tokenizer: `SPECIALS`, `vlm_lens.zoo.tasks.vocabulary`, then the codes.

    Example:
        >>> tok = build_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("<image>what shape is it?").input_ids)
        ['<s>', '<image>', 'what', 'shape', 'is', 'it', '?']
        >>> len(tok) == len(SPECIALS) + len(tasks.vocabulary()) + CODEBOOK
        True
    """
    from vlm_lens.zoo.tokenizer import word_tokenizer

    return word_tokenizer(
        tasks.vocabulary(),
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


def train_pool(settings: Settings, processor: Any) -> tuple[list[world.Scene], Tensor]:
    """The training scenes (single object, 32x32) and their pixel values from the processor."""
    scenes = world.world_split(
        "train",
        settings.train_scenes,
        settings.world_seed,
        image_size=IMAGE_SIZE,
        max_objects=1,
    )
    return scenes, pixel_values(processor, [s.image for s in scenes])


def shape_indices(scenes: Sequence[world.Scene]) -> Tensor:
    """``[n]`` index in `world.SHAPES` of each single-object scene's shape."""
    return torch.tensor([world.SHAPES.index(s.objects[0].shape) for s in scenes])


def pixel_values(processor: Any, images: Sequence[Any]) -> Tensor:
    """``[n, 3, 32, 32]`` pixel values of `images`, exactly as the processor makes them."""
    chunks = [
        processor.image_processor(list(images[i : i + 1024]), return_tensors="pt").pixel_values
        for i in range(0, len(images), 1024)
    ]
    return torch.cat(chunks).float()


# --------------------------------------------------------------------------------------------
# Phase 1: VQ image tokenizer


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class PixelDecoder(nn.Module):
    """The training-only decoder of phase 1: ``post_quant_conv`` output (the code grid) ->
    32x32 pixels, one nearest-neighbour upsampling per VQ encoder downsampling.

    It exists to give the VQ encoder a reconstruction loss and is discarded after training.
    """

    def __init__(self, latent_channels: int, upsamplings: int, channels: int = 64):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(latent_channels, channels, 3, padding=1),
            _ResBlock(channels),
        ]
        width = channels
        for i in range(upsamplings):
            last = i == upsamplings - 1
            out = channels // 2 if last else channels
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(width, out, 3, padding=1),
            ]
            layers += [nn.SiLU()] if last else [_ResBlock(out)]
            width = out
        layers.append(nn.Conv2d(width, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, latent: Tensor) -> Tensor:
        """Pixels in the processor's range (about [-1, 1])."""
        return self.net(latent)


def _vq_forward(vq: Any, decoder: PixelDecoder, pixels: Tensor) -> tuple[Tensor, ...]:
    """Encode, quantise (the model's own nearest-code rule) and decode `pixels`.

    Returns:
        ``(reconstruction, codebook loss, commitment loss, code indices, encoder vectors,
        quantised vectors with straight-through gradients [b * GRID * GRID, vq_dim])``.
    """
    z = vq.quant_conv(vq.encoder(pixels))  # [b, d, GRID, GRID]
    _, _, indices = vq.quantize(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    codes = vq.quantize.embedding(indices)
    codebook = F.mse_loss(codes, flat.detach())
    commitment = F.mse_loss(flat, codes.detach())
    quantised = flat + (codes - flat).detach()  # straight-through
    quantised = quantised.view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
    recon = decoder(vq.post_quant_conv(quantised))
    straight = quantised.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    return recon, codebook, commitment, indices, flat.detach(), straight


def train_vq(
    vq: Any,
    pixels: Tensor,
    shapes: Tensor,
    held_out: Tensor,
    held_out_shapes: Tensor,
    settings: Settings,
) -> dict[str, Any]:
    """Phase 1: train the VQ encoder, quantizer and ``post_quant_conv`` of `vq` in place.

    Args:
        vq: the model's ``ChameleonVQVAE``.
        pixels: training pixel values ``[n, 3, 32, 32]``.
        shapes: index in `world.SHAPES` of each training image's object ``[n]``.
        held_out: test-split pixel values for the reported reconstruction error.
        held_out_shapes: their objects' shape indices.
        settings: the recipe.

    Returns:
        Statistics: final losses, held-out reconstruction error and codebook use.
    """
    generator = torch.Generator().manual_seed(settings.seed + 1)
    torch.manual_seed(settings.seed + 1)
    for module in vq.modules():  # HF draws conv weights from N(0, 0.02): far too small here
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    decoder = PixelDecoder(settings.vq_latent, VQ_LEVELS - 1)
    shape_head = nn.Linear(settings.vq_dim, len(world.SHAPES))
    vq.train()
    codebook = vq.quantize.embedding.weight
    trained = [*vq.parameters(), *decoder.parameters(), *shape_head.parameters()]
    others = [p for p in trained if p is not codebook]
    optimiser = torch.optim.Adam(
        [
            {"params": others, "lr_scale": 1.0},
            {"params": [codebook], "lr_scale": CODEBOOK_LR_SCALE},
        ],
        lr=settings.vq_lr,
    )
    with torch.no_grad():  # codebook starts at encoder outputs
        first = pixels[torch.randperm(len(pixels), generator=generator)[:256]]
        z = vq.quant_conv(vq.encoder(first)).permute(0, 2, 3, 1).reshape(-1, settings.vq_dim)
        pick = torch.randperm(len(z), generator=generator)[:CODEBOOK]
        vq.quantize.embedding.weight.copy_(z[pick])
    usage = torch.zeros(CODEBOOK)
    restarted = 0
    history: list[float] = []
    bar = tqdm(range(settings.vq_steps), desc="phase 1: VQ tokenizer", unit="step")
    for step in bar:
        _set_lr(optimiser, settings.vq_lr * _schedule(step, settings.vq_steps, 30))
        pick = torch.randint(len(pixels), (settings.vq_batch,), generator=generator)
        batch = pixels[pick]
        recon, codebook, commitment, indices, flat, straight = _vq_forward(vq, decoder, batch)
        rec = _reconstruction_loss(recon, batch, settings.vq_object_weight)
        shape = _shape_loss(shape_head, straight, batch, shapes[pick])
        loss = rec + codebook + 0.25 * commitment + settings.vq_shape_weight * shape
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        usage += torch.bincount(indices, minlength=CODEBOOK).float()
        if (step + 1) % 25 == 0 and step < settings.vq_steps * 0.8:
            restarted += _restart_dead_codes(vq, usage, flat, generator)
            usage.zero_()
        history.append(rec.item())
        if step % 10 == 0:
            bar.set_postfix(
                rec=f"{rec.item():.4f}", cb=f"{codebook.item():.4f}", shape=f"{shape.item():.3f}"
            )
    vq.eval()
    for param in vq.parameters():
        param.requires_grad_(False)
    with torch.no_grad():
        recon, _, _, indices, _, straight = _vq_forward(vq, decoder, held_out)
        covers = _object_codes(held_out)
        guesses = shape_head(straight).argmax(-1)
        truth = held_out_shapes[:, None].expand(-1, GRID * GRID).reshape(-1)
        code_shape_accuracy = (guesses == truth)[covers].float().mean().item()
        counts = torch.bincount(indices, minlength=CODEBOOK).float()
        probs = counts / counts.sum()
        perplexity = math.exp(-(probs[probs > 0] * probs[probs > 0].log()).sum().item())
        error = (recon - held_out).square().mean().item()
        chromatic = (held_out.amax(dim=1) - held_out.amin(dim=1)) > 1e-3
        object_error = (recon - held_out).square().mean(dim=1)[chromatic].mean().item()
    return {
        "steps": settings.vq_steps,
        "final_train_reconstruction_mse": round(_tail(history), 5),
        "test_reconstruction_mse": round(error, 5),
        "test_reconstruction_rmse_0_255": round(math.sqrt(error) / 0.0078, 2),
        "test_object_pixel_mse": round(object_error, 5),
        "pixel_range": "processor pixel values (x * 0.0078 - 1, about [-1, 1])",
        "test_images": len(held_out),
        "codes_used_on_test": int((counts > 0).sum().item()),
        "code_perplexity_on_test": round(perplexity, 1),
        "dead_code_restarts": restarted,
        "test_object_code_shape_accuracy": round(code_shape_accuracy, 4),
    }


def _reconstruction_loss(recon: Tensor, pixels: Tensor, object_weight: float) -> Tensor:
    """Pixel MSE, with the object's pixels (the chromatic ones: the world's background is grey)
    weighted `object_weight` times a background pixel."""
    chromatic = (pixels.amax(dim=1) - pixels.amin(dim=1)) > 1e-3  # [b, h, w]
    weight = 1.0 + (object_weight - 1.0) * chromatic.float()
    per_pixel = (recon - pixels).square().mean(dim=1)
    return (weight * per_pixel).sum() / weight.sum()


def _object_codes(pixels: Tensor) -> Tensor:
    """``[b * GRID * GRID]`` bool: the codes whose patch holds an object (chromatic) pixel."""
    chromatic = ((pixels.amax(dim=1) - pixels.amin(dim=1)) > 1e-3).float()  # [b, h, w]
    side = IMAGE_SIZE // GRID
    return F.max_pool2d(chromatic[:, None], side).flatten().bool()


def _shape_loss(head: nn.Module, straight: Tensor, pixels: Tensor, shapes: Tensor) -> Tensor:
    """Cross entropy of the object's shape, predicted by `head` from each object code."""
    covers = _object_codes(pixels)
    truth = shapes[:, None].expand(-1, GRID * GRID).reshape(-1)
    return F.cross_entropy(head(straight[covers]), truth[covers])


def _restart_dead_codes(vq: Any, usage: Tensor, flat: Tensor, generator: torch.Generator) -> int:
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return 0
    pick = torch.randint(len(flat), (len(dead),), generator=generator)
    with torch.no_grad():
        vq.quantize.embedding.weight[dead] = flat[pick]
    return len(dead)


@torch.no_grad()
def init_code_embeddings(model: Any, seed: int) -> None:
    """Start the decoder's embeddings of the code tokens from the VQ codebook.

    Each codebook vector goes through one fixed random orthonormal map to the decoder width,
    scaled to the embedding table's spread, so that codes of similar patches start with similar
    embeddings (the decoder then generalises across object offsets much sooner than from a
    random table).
    """
    codebook = model.model.vqmodel.quantize.embedding.weight  # [codes, vq_dim]
    table = model.model.embed_tokens.weight  # [vocab, hidden]
    generator = torch.Generator().manual_seed(seed + 3)
    gaussian = torch.randn(table.shape[1], codebook.shape[1], generator=generator)
    projection, _ = torch.linalg.qr(gaussian)  # [hidden, vq_dim], orthonormal columns
    mapped = (codebook - codebook.mean(dim=0)) @ projection.T
    mapped *= table.std() / mapped.std()
    mapping = model.model.vocabulary_mapping
    ids = torch.tensor([mapping.img2bpe[i] for i in range(codebook.shape[0])])
    table[ids] = mapped


@torch.no_grad()
def image_codes(model: Any, pixels: Tensor) -> Tensor:
    """``[n, 64]`` code-token ids of `pixels`, by the model's own ``get_image_tokens``."""
    return torch.cat(
        [model.model.get_image_tokens(pixels[i : i + 512]) for i in range(0, len(pixels), 512)]
    ).long()


# --------------------------------------------------------------------------------------------
# Phase 2: decoder


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
    """Builds training rows with the processor's token layout (cached per prompt text)."""

    def __init__(self, processor: Any, image_weight: float = 0.0):
        self.processor = processor
        self.image_weight = image_weight
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
            self._prompts[text] = list(ids)
        return self._prompts[text]

    def words(self, text: str) -> list[int]:
        """Token ids of a target text followed by ``</s>``."""
        if text not in self._words:
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            self._words[text] = [*ids, self.tokenizer.eos_token_id]
        return self._words[text]

    def image_row(
        self, scene: world.Scene, codes: Tensor, qas: Sequence[world.QA] | None = None
    ) -> _Row:
        """The scene's image prefix, then every question of `qas` (default: `all_qa` and the
        caption prompt), each with its target, as separate segments that see the prefix and
        themselves only."""
        row = _Row()
        prompts = [
            (tasks.question_prompt(qa.question, "<image>"), qa.answer)
            for qa in (world.all_qa(scene) if qas is None else qas)
        ]
        if qas is None:
            prompts.append((tasks.caption_prompt("<image>"), scene.caption))
        n = self.prefix_len
        prefix = self.prompt(prompts[0][0])[:n]
        code_list = codes.tolist()
        prefix = [code_list.pop(0) if t == self.image_id else t for t in prefix]
        # the image codes and <eoss> are targets too (weight `image_weight`: image modelling)
        row.add(prefix, 0, 0, GRID * GRID + 1, self.image_weight) if self.image_weight else row.add(
            prefix, 0, 0, 0, 0.0
        )
        for k, (text, target) in enumerate(prompts, start=1):
            ids = self.prompt(text)
            if any(t == self.image_id for t in ids[n:]):
                raise ValueError("the image must come first in the prompt")
            target_ids = self.words(target)
            row.add([*ids[n:], *target_ids], k, n, len(target_ids), 1.0)
        return row

    def draw_row(self, scene: world.Scene, codes: Tensor, weight: float) -> _Row:
        """``draw {caption}`` then BOI, the codes, EOI and ``</s>`` (the target)."""
        tok = self.tokenizer
        target = [
            tok.convert_tokens_to_ids("<racm3:break>"),
            *codes.tolist(),
            tok.convert_tokens_to_ids("<eoss>"),
            tok.eos_token_id,
        ]
        row = _Row()
        row.add(
            [*self.prompt(tasks.draw_prompt(scene.caption)), *target], 1, 0, len(target), weight
        )
        return row


def collate(rows: Sequence[_Row], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``position_ids``, a 4D additive attention mask (a token sees
    earlier tokens of its own segment and of segment 0), next-token ``labels`` and ``weights``."""
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
    labels = torch.cat([ids[:, 1:], torch.full((n, 1), pad_id)], dim=1)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    q_seg, k_seg = segments[:, :, None], segments[:, None, :]
    allowed = causal & (k_seg >= 0) & ((k_seg == 0) | (k_seg == q_seg))
    allowed |= torch.eye(width, dtype=torch.bool)  # padding rows see themselves
    mask = torch.zeros((n, 1, width, width))
    mask.masked_fill_(~allowed[:, None], torch.finfo(mask.dtype).min)
    return {
        "input_ids": ids,
        "position_ids": positions,
        "attention_mask": mask,
        "labels": labels,
        "weights": weights,
    }


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


def train_decoder(
    model: Any,
    encoder: Encoder,
    scenes: Sequence[world.Scene],
    codes: Tensor,
    settings: Settings,
    monitor: tuple[Sequence[world.Scene], Tensor] | None = None,
) -> dict[str, Any]:
    """Phase 2: train the decoder (embeddings, layers, norm, ``lm_head``) on both directions.

    Image -> text rows and text -> image rows come from disjoint halves of the scene pool, each
    cycled in a seeded random order.

    Args:
        model: the model; its VQ tokenizer stays frozen.
        encoder: builds the rows.
        scenes: the training scenes.
        codes: their code-token ids ``[n, image tokens]``.
        settings: the recipe.
        monitor: validation scenes and codes whose teacher-forced answers are checked every
            ``monitor_every`` steps (logged and returned, never used for training).

    Returns:
        Statistics: steps, rows, final losses, the monitor's curve.
    """
    rng = random.Random(settings.seed + 2)
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
    half = len(scenes) // 2
    image_side = _Cycle(range(half), rng)
    draw_side = _Cycle(range(half, len(scenes)), rng)
    pad = encoder.tokenizer.pad_token_id
    text_hist: list[float] = []
    draw_hist: list[float] = []
    curve: dict[int, dict[str, float]] = {}
    bar = tqdm(range(settings.lm_steps), desc="phase 2: decoder", unit="step")
    for step in bar:
        _set_lr(optimiser, settings.lm_lr * _schedule(step, settings.lm_steps, 50))
        rows = [encoder.image_row(scenes[i], codes[i]) for i in image_side.take(settings.lm_scenes)]
        rows += [
            encoder.draw_row(scenes[i], codes[i], settings.draw_weight)
            for i in draw_side.take(settings.lm_draws)
        ]
        batch = collate(rows, pad)
        losses = row_losses(model, batch) * batch["weights"]
        loss = losses.sum() / batch["weights"].sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        with torch.no_grad():
            n_text = settings.lm_scenes
            w = batch["weights"]
            text_hist.append((losses[:n_text].sum() / w[:n_text].sum()).item())
            draw_hist.append((losses[n_text:].sum() / w[n_text:].sum()).item())
        if step % 10 == 0:
            bar.set_postfix(text=f"{text_hist[-1]:.3f}", draw=f"{draw_hist[-1]:.3f}")
        if monitor is not None and (step + 1) % settings.monitor_every == 0:
            curve[step + 1] = answer_match(model, encoder, *monitor)
            logger.info("step %d: validation answer match %s", step + 1, curve[step + 1])
    model.eval()
    return {
        "steps": settings.lm_steps,
        "rows_per_step": {"image_to_text": settings.lm_scenes, "text_to_image": settings.lm_draws},
        "final_train_loss": {
            "image_to_text": round(_tail(text_hist), 4),
            "text_to_image": round(_tail(draw_hist), 4),
        },
        "validation_answer_match": curve,
    }


@torch.no_grad()
def held_out_losses(
    model: Any, encoder: Encoder, scenes: Sequence[world.Scene], codes: Tensor
) -> dict[str, float]:
    """Mean target loss (nats per token) on held-out scenes: answers and captions (teacher
    forced), and the codes of text -> image drawing, with a unigram baseline for the codes."""
    model.eval()
    pad = encoder.tokenizer.pad_token_id
    text_sum = text_n = draw_sum = draw_n = 0.0
    for start in range(0, len(scenes), 32):
        chunk = range(start, min(start + 32, len(scenes)))
        rows = [encoder.image_row(scenes[i], codes[i]) for i in chunk]
        rows += [encoder.draw_row(scenes[i], codes[i], 1.0) for i in chunk]
        batch = collate(rows, pad)
        losses = row_losses(model, batch)
        targets = batch["weights"] > 0
        k = len(chunk)
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
    hits: dict[str, list[bool]] = {kind: [] for kind in world.KINDS}
    pad = encoder.tokenizer.pad_token_id
    for start in range(0, len(scenes), 16):
        chunk = range(start, min(start + 16, len(scenes)))
        rows = [encoder.image_row(scenes[i], codes[i], scenes[i].qa) for i in chunk]
        batch = collate(rows, pad)
        hidden = model.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
        ).last_hidden_state
        right = model.lm_head(hidden).argmax(-1) == batch["labels"]
        for b, (i, row) in enumerate(zip(chunk, rows, strict=True)):
            segments = torch.tensor(row.segments)
            targets = batch["weights"][b, : len(row.ids)] > 0
            for k, qa in enumerate(scenes[i].qa, start=1):
                where = targets & (segments == k)
                hits[qa.kind].append(bool(right[b, : len(row.ids)][where].all()))
    model.train(was_training)
    return {kind: round(sum(h) / len(h), 3) for kind, h in hits.items() if h}


class _Cycle:
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


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def _set_lr(optimiser: torch.optim.Optimizer, lr: float) -> None:
    for group in optimiser.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _tail(values: Sequence[float]) -> float:
    """Mean of the last 10% of `values` (at least one)."""
    tail = values[-max(1, len(values) // 10) :]
    return float(sum(tail) / len(tail))


# --------------------------------------------------------------------------------------------
# Saving and evaluation


def held_out_scenes(settings: Settings) -> list[world.Scene]:
    """The first ``eval_scenes`` single-object test scenes (32x32)."""
    return world.world_split(
        "test", settings.eval_scenes, settings.world_seed, image_size=IMAGE_SIZE, max_objects=1
    )


def run(settings: Settings, out: Path) -> dict[str, Any]:
    """Train both phases, save the folder to `out`, evaluate it, write ``training.json``.

    Returns:
        The record written to ``training.json``.
    """
    torch.set_num_threads(1)
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    random.seed(settings.seed)
    clock = Clock()
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    config = build_config(tokenizer, settings)
    model = build_model(config, settings.seed)
    record: dict[str, Any] = {
        "command": command_line(PROG, settings, out),
        "settings": asdict(settings),
        "data": "single-object world scenes (max_objects=1), 32x32; train split for training, "
        "test split for evaluation",
        "image_tokens": GRID * GRID,
        "codebook": CODEBOOK,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "phases": {},
    }
    phases = record["phases"]
    scenes, pixels = train_pool(settings, processor)
    held_out = held_out_scenes(settings)
    held_pixels = pixel_values(processor, [s.image for s in held_out])
    phases["data"] = clock.lap()
    phases["vq"] = train_vq(
        model.model.vqmodel,
        pixels,
        shape_indices(scenes),
        held_pixels,
        shape_indices(held_out),
        settings,
    )
    phases["vq"].update(clock.lap())
    codes = image_codes(model, pixels)
    held_codes = image_codes(model, held_pixels)
    init_code_embeddings(model, settings.seed)
    encoder = Encoder(processor, settings.image_weight)
    val = world.world_split(
        "val", settings.monitor_scenes, settings.world_seed, image_size=IMAGE_SIZE, max_objects=1
    )
    val_codes = image_codes(model, pixel_values(processor, [s.image for s in val]))
    phases["decoder"] = train_decoder(
        model, encoder, scenes, codes, settings, monitor=(val, val_codes)
    )
    phases["decoder"].update(clock.lap())
    save_checkpoint(model, processor, out)
    record["held_out_losses"] = held_out_losses(model, encoder, held_out, held_codes)
    record["parameters"] = {
        "total": sum(p.numel() for p in model.parameters()),
        "vq_tokenizer": sum(p.numel() for p in model.model.vqmodel.parameters()),
        "decoder": sum(
            p.numel() for n, p in model.named_parameters() if not n.startswith("model.vqmodel.")
        ),
    }
    evaluate = lambda: held_out_accuracy(out, held_out)  # noqa: E731
    return finish_record(record, out, evaluate, clock, settings.eval_scenes)


PROG = "python -m vlm_lens.zoo.native"
"""The training command."""


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m vlm_lens.zoo.native`` (options: ``--out`` and every field of
    `Settings`, e.g. ``--seed``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    settings, out = parse_settings(
        Settings, PROG, "Train the native organism (a tiny Chameleon) and write its folder.", argv
    )
    print_summary(run(settings, out), out)


if __name__ == "__main__":
    main()

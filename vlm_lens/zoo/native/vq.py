"""Phase 1: the VQ image tokenizer (Chameleon's VQ-VAE encoder and quantizer, trained with a
training-only pixel decoder), and the decoder's code embeddings.

Example:
    >>> decoder = PixelDecoder(latent_channels=64, upsamplings=1)
    >>> decoder(torch.zeros(1, 64, 16, 16)).shape
    torch.Size([1, 3, 32, 32])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from vlm_lens import world
from vlm_lens.zoo.native.checkpointing import Checkpointer
from vlm_lens.zoo.native.optim import Budget, set_lr, tail
from vlm_lens.zoo.native.settings import CODEBOOK, CODEBOOK_LR_SCALE, VQ_LEVELS, Settings


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
    checkpointer: Checkpointer | None = None,
) -> dict[str, Any]:
    """Phase 1: train the VQ encoder, quantizer and ``post_quant_conv`` of `vq` in place.

    Args:
        vq: the model's ``ChameleonVQVAE``.
        pixels: training pixel values ``[n, 3, 32, 32]``.
        shapes: `shape_targets` of the training images ``[n, GRID * GRID]``.
        held_out: test-split pixel values for the reported reconstruction error.
        held_out_shapes: their `shape_targets`.
        settings: the recipe.
        checkpointer: saves progress every ``checkpoint_every`` steps and resumes from it.

    Returns:
        Statistics: final losses, held-out reconstruction error and codebook use.
    """
    generator = torch.Generator().manual_seed(settings.seed + 1)
    torch.manual_seed(settings.seed + 1)
    for module in vq.modules():  # HF draws conv weights from N(0, 0.02): far too small here
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    device = vq.quantize.embedding.weight.device
    decoder = PixelDecoder(settings.vq_latent, VQ_LEVELS - 1).to(device)
    shape_head = nn.Linear(settings.vq_dim, len(world.SHAPES)).to(device)
    pixels, shapes = pixels.to(device), shapes.to(device)
    held_out, held_out_shapes = held_out.to(device), held_out_shapes.to(device)
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
        first = pixels[torch.randperm(len(pixels), generator=generator)[:256].to(device)]
        z = vq.quant_conv(vq.encoder(first)).permute(0, 2, 3, 1).reshape(-1, settings.vq_dim)
        pick = torch.randperm(len(z), generator=generator)[:CODEBOOK]
        vq.quantize.embedding.weight.copy_(z[pick.to(device)])
    usage = torch.zeros(CODEBOOK, device=device)
    restarted = 0
    history: list[Tensor] = []  # per-step losses, kept on the device (one sync at the end)
    start = 0
    elapsed = 0.0
    resumed = checkpointer.resume("vq") if checkpointer else None
    if resumed is not None:
        start, loop = resumed
        assert checkpointer is not None
        checkpointer.restore_model()  # the VQ weights, over the fresh ones above
        decoder.load_state_dict(loop["pixel_decoder"])
        shape_head.load_state_dict(loop["shape_head"])
        optimiser.load_state_dict(loop["optimiser"])
        generator.set_state(loop["generator"])
        usage, restarted = loop["usage"].to(device), loop["restarted"]
        history = [torch.tensor(v, device=device) for v in loop["history"]]
        elapsed = loop.get("elapsed", 0.0)
    budget = Budget(settings.vq_steps, settings.vq_seconds, 30, elapsed)

    def loop_state() -> dict[str, Any]:
        return {
            "pixel_decoder": decoder.state_dict(),
            "shape_head": shape_head.state_dict(),
            "optimiser": optimiser.state_dict(),
            "generator": generator.get_state(),
            "usage": usage.clone(),
            "restarted": restarted,
            "history": [float(v) for v in history],
            "elapsed": budget.elapsed(),
        }

    bar = tqdm(
        range(start, settings.vq_steps),
        desc="phase 1: VQ tokenizer",
        unit="step",
        initial=start,
        total=settings.vq_steps,
    )
    done = start
    for step in bar:
        set_lr(optimiser, settings.vq_lr * budget.lr_factor(step))
        pick = torch.randint(len(pixels), (settings.vq_batch,), generator=generator).to(device)
        batch = pixels[pick]
        recon, codebook, commitment, indices, flat, straight = _vq_forward(vq, decoder, batch)
        rec = _reconstruction_loss(recon, batch, settings.vq_object_weight)
        shape = _shape_loss(shape_head, straight, shapes[pick])
        loss = rec + codebook + 0.25 * commitment
        if settings.shape_weight:
            loss = loss + settings.shape_weight * shape
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        usage += torch.bincount(indices, minlength=CODEBOOK).float()
        if (step + 1) % 25 == 0 and budget.before(step, 0.8):
            restarted += _restart_dead_codes(vq, usage, flat, generator)
            usage.zero_()
        history.append(rec.detach())
        if step % 10 == 0:
            bar.set_postfix(
                rec=f"{rec.item():.4f}", cb=f"{codebook.item():.4f}", shape=f"{shape.item():.3f}"
            )
        done = step + 1
        if checkpointer:
            checkpointer.step("vq", step + 1, settings.vq_steps, loop_state)
        if budget.over(done):
            break
    seconds = budget.elapsed()
    vq.eval()
    for param in vq.parameters():
        param.requires_grad_(False)
    with torch.no_grad():
        recon, _, _, indices, _, straight = _vq_forward(vq, decoder, held_out)
        truth = held_out_shapes.reshape(-1)
        covers = truth >= 0
        guesses = shape_head(straight).argmax(-1)
        code_shape_accuracy = (guesses == truth)[covers].float().mean().item()
        counts = torch.bincount(indices, minlength=CODEBOOK).float()
        probs = counts / counts.sum()
        perplexity = math.exp(-(probs[probs > 0] * probs[probs > 0].log()).sum().item())
        error = (recon - held_out).square().mean().item()
        chromatic = (held_out.amax(dim=1) - held_out.amin(dim=1)) > 1e-3
        object_error = (recon - held_out).square().mean(dim=1)[chromatic].mean().item()
    return {
        "steps": done,
        **_speed(done, seconds, settings.vq_seconds),
        "final_train_reconstruction_mse": round(tail([float(v) for v in history]), 5),
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


def _speed(steps: int, seconds: float, budget: float) -> dict[str, Any]:
    """The phase's measured speed (its steps over its wall seconds, over every resumed part)
    and its time budget, for calibration."""
    rate = steps / seconds if seconds > 0 else None
    out: dict[str, Any] = {"steps_per_second": None if rate is None else round(rate, 2)}
    if budget:
        out["seconds_budget"] = budget
    return out


def _reconstruction_loss(recon: Tensor, pixels: Tensor, object_weight: float) -> Tensor:
    """Pixel MSE, with the object's pixels (the chromatic ones: the world's background is grey)
    weighted `object_weight` times a background pixel."""
    chromatic = (pixels.amax(dim=1) - pixels.amin(dim=1)) > 1e-3  # [b, h, w]
    weight = 1.0 + (object_weight - 1.0) * chromatic.float()
    per_pixel = (recon - pixels).square().mean(dim=1)
    return (weight * per_pixel).sum() / weight.sum()


def _shape_loss(head: nn.Module, straight: Tensor, shapes: Tensor) -> Tensor:
    """Cross entropy of the object's shape, predicted by `head` from each object code
    (`shapes`: ``[b, GRID * GRID]`` `shape_targets`)."""
    truth = shapes.reshape(-1)
    covers = truth >= 0
    return F.cross_entropy(head(straight[covers]), truth[covers])


def _restart_dead_codes(vq: Any, usage: Tensor, flat: Tensor, generator: torch.Generator) -> int:
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return 0
    pick = torch.randint(len(flat), (len(dead),), generator=generator).to(flat.device)
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
    mapped = (codebook - codebook.mean(dim=0)) @ projection.T.to(codebook.device)
    mapped *= table.std() / mapped.std()
    mapping = model.model.vocabulary_mapping
    ids = torch.tensor([mapping.img2bpe[i] for i in range(codebook.shape[0])])
    table[ids.to(table.device)] = mapped


@torch.no_grad()
def fresh_code_embeddings(model: Any, seed: int) -> None:
    """Re-draw the decoder's embeddings of the code tokens: N(0, the config's
    ``initializer_range``), seeded (the pixel tokenizer's and the text-initialised decoder's
    start)."""
    table = model.model.embed_tokens.weight
    generator = torch.Generator().manual_seed(seed + 3)
    mapping = model.model.vocabulary_mapping
    ids = torch.tensor([mapping.img2bpe[i] for i in range(CODEBOOK)])
    std = model.config.initializer_range
    fresh = torch.randn(len(ids), table.shape[1], generator=generator) * std
    table[ids.to(table.device)] = fresh.to(table.device)


@torch.no_grad()
def image_codes(model: Any, pixels: Tensor) -> Tensor:
    """``[n, 64]`` code-token ids of `pixels`, by the model's own ``get_image_tokens``."""
    device = model.model.vqmodel.quantize.embedding.weight.device
    return torch.cat(
        [
            model.model.get_image_tokens(pixels[i : i + 512].to(device)).cpu()
            for i in range(0, len(pixels), 512)
        ]
    ).long()

"""Linear probes on a frozen VQ tokenizer: how much shape and colour its codes keep.

The training record's ``test_object_code_shape_accuracy`` is the training-only shape head's, and
that head never trains for the pixel tokenizer (weight 0), so it says nothing about the pixel
codes. These probes are trained here, on the frozen VQ, for any tokenizer:

* ``object_code``: the attribute of the object a code covers, from that one code's quantised
  vector (relational scenes: 2-4 objects), next to ``object_patch_pixels``, the same probe on
  the pixel values of the code's own patch (`code_patches`: what the patch shows; the encoder
  sees a wider neighbourhood);
* ``grid_codes``: the attribute of the one object of a single-object scene from the whole
  grid's quantised vectors (``GRID * GRID * vq_dim`` features), next to ``grid_pixels``, the
  same probe on the raw pixel values (the reference: what a linear read of the image gets).

Each comes with the majority rate (the train labels' most common class, scored on the test
labels) and chance (one over the number of classes).

Example:
    >>> x = torch.eye(3).repeat(4, 1)
    >>> y = torch.arange(3).repeat(4)
    >>> linear_probe(x, y, x, y, steps=50)
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.nn import functional as F

from vlm_lens import world
from vlm_lens.zoo.native.build import pixel_values
from vlm_lens.zoo.native.settings import GRID, IMAGE_SIZE

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": tuple(world.SHAPES),
    "colour": tuple(world.COLOURS),
}
"""The probed attributes and their classes."""


@torch.no_grad()
def quantised_codes(
    vq: Any, pixels: Float[Tensor, "n 3 h w"], batch: int = 512
) -> tuple[Tensor, Tensor]:
    """Code indices ``[n, GRID * GRID]`` (row-major) and their quantised vectors
    ``[n, GRID * GRID, vq_dim]``, by the VQ's own nearest-code rule, on the VQ's device."""
    device = vq.quantize.embedding.weight.device
    idx, vecs = [], []
    for i in range(0, len(pixels), batch):
        z = vq.quant_conv(vq.encoder(pixels[i : i + batch].to(device)))
        _, _, indices = vq.quantize(z)
        indices = indices.view(len(z), -1)
        idx.append(indices)
        vecs.append(vq.quantize.embedding(indices))
    return torch.cat(idx), torch.cat(vecs)


def linear_probe(
    x: Float[Tensor, "n d"],
    y: Int[Tensor, " n"],
    x_test: Float[Tensor, "m d"],
    y_test: Int[Tensor, " m"],
    steps: int = 300,
    lr: float = 1e-2,
    seed: int = 0,
) -> float:
    """Held-out accuracy of a softmax-regression probe: features standardised by the train
    statistics, full-batch Adam for `steps` steps (weight decay 1e-4), seeded.

    Raises:
        ValueError: when a set is empty, the lengths differ or a label is negative.
    """
    if len(x) == 0 or len(x_test) == 0:
        raise ValueError("linear_probe needs at least one train and one test example")
    if len(x) != len(y) or len(x_test) != len(y_test):
        raise ValueError(
            f"features and labels differ in length ({len(x)} vs {len(y)}, test {len(x_test)} vs "
            f"{len(y_test)}); pass one label per row"
        )
    if int(min(y.min(), y_test.min())) < 0:
        raise ValueError("labels must be class indices >= 0; drop the unlabelled rows (-1) first")
    mean, std = x.mean(0), x.std(0) + 1e-5
    x, x_test = (x - mean) / std, (x_test - mean) / std
    generator = torch.Generator().manual_seed(seed)
    classes = int(max(y.max(), y_test.max())) + 1
    head = torch.nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        bound = 1 / x.shape[1] ** 0.5
        head.weight.copy_(torch.rand(head.weight.shape, generator=generator) * 2 * bound - bound)
        head.bias.zero_()
    head = head.to(x.device)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(head(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((head(x_test).argmax(-1) == y_test).float().mean())


def majority_rate(y: Int[Tensor, " n"], y_test: Int[Tensor, " m"]) -> float:
    """The share of `y_test` equal to the most common class of `y`.

    Example:
        >>> majority_rate(torch.tensor([0, 1, 1]), torch.tensor([1, 2, 2, 2]))
        0.25
    """
    majority = int(torch.bincount(y).argmax())
    return float((y_test == majority).float().mean())


def code_patches(pixels: Float[Tensor, "n 3 h w"]) -> Tensor:
    """``[n, GRID * GRID, 3 * side * side]`` the pixel values of each code's patch (row-major
    codes; ``side = IMAGE_SIZE // GRID``): the raw-pixel reference of the one-code probe.

    Example:
        >>> code_patches(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)).shape
        torch.Size([2, 256, 12])
    """
    n, side = len(pixels), IMAGE_SIZE // GRID
    grid = pixels.reshape(n, 3, GRID, side, GRID, side).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(n, GRID * GRID, -1)


def code_targets(scenes: Sequence[world.Scene], attribute: str) -> Tensor:
    """``[n, GRID * GRID]`` class index (in `ATTRIBUTES`) of the `attribute` of the object each
    code's patch shows, -1 where it shows none (each object's mask; a later object overwrites
    an earlier one, as it is painted over it).

    Raises:
        ValueError: for an attribute not in `ATTRIBUTES`.
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; choose one of {list(ATTRIBUTES)}")
    classes = ATTRIBUTES[attribute]
    side = IMAGE_SIZE // GRID
    out = torch.full((len(scenes), GRID * GRID), -1, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            mask = torch.from_numpy(world.object_mask(obj, IMAGE_SIZE)).float()
            covers = F.max_pool2d(mask[None, None], side).flatten().bool()
            out[i][covers] = classes.index(getattr(obj, attribute))
    return out


def scene_targets(scenes: Sequence[world.Scene], attribute: str) -> Tensor:
    """``[n]`` class index of the `attribute` of each single-object scene's object.

    Raises:
        ValueError: when a scene has more or fewer than one object.
    """
    if any(len(s.objects) != 1 for s in scenes):
        raise ValueError("scene_targets needs single-object scenes (world_split(max_objects=1))")
    return torch.tensor(
        [ATTRIBUTES[attribute].index(getattr(s.objects[0], attribute)) for s in scenes]
    )


def vq_probes(
    vq: Any,
    processor: Any,
    world_seed: int = 0,
    n_train: int = 2000,
    n_test: int = 500,
    steps: int = 300,
    multi_task: str = "relational",
) -> dict[str, Any]:
    """Every probe of this module on the frozen `vq` (on its device), for shape and colour.

    Args:
        vq: a ``ChameleonVQVAE`` (eval mode).
        processor: the organism's processor (its image processor makes the pixel values).
        world_seed: the world seed of the train and test scenes.
        n_train: train scenes of each probe.
        n_test: test scenes of each probe.
        steps: optimiser steps of each probe.
        multi_task: the task of the scenes of the ``object_code`` probes (``"relational"``:
            2-4 objects; ``"local"``: one).

    Returns:
        ``{object_code, object_code_majority, object_patch_pixels, grid_codes, grid_pixels,
        grid_majority}`` for shape
        (the keys of the GPU scripts), the same with a ``_colour`` suffix for colour, ``chance``
        and ``colour_chance``, and the sizes.
    """
    device = vq.quantize.embedding.weight.device
    out: dict[str, Any] = {"train_scenes": n_train, "test_scenes": n_test, "steps": steps}
    splits = (("train", n_train), ("test", n_test))
    multi = {s: world.task_split(multi_task, s, n, world_seed) for s, n in splits}
    single = {s: world.world_split(s, n, world_seed, max_objects=1) for s, n in splits}
    code_vecs, patch_pixels, grid_vecs, raw = {}, {}, {}, {}
    for split, _ in splits:
        pixels = pixel_values(processor, [s.image for s in multi[split]])
        _, code_vecs[split] = quantised_codes(vq, pixels)
        patch_pixels[split] = code_patches(pixels).to(device)
        pixels = pixel_values(processor, [s.image for s in single[split]])
        _, vecs = quantised_codes(vq, pixels)
        grid_vecs[split], raw[split] = vecs.flatten(1), pixels.flatten(1).to(device)
    for attribute in ATTRIBUTES:
        suffix = "" if attribute == "shape" else f"_{attribute}"
        feats = {}
        for split, _ in splits:
            y = code_targets(multi[split], attribute).to(device)
            covers = y >= 0
            feats[split] = (code_vecs[split][covers], y[covers])
        out[f"object_code{suffix}"] = round(linear_probe(*feats["train"], *feats["test"], steps), 4)
        out[f"object_code{suffix}_majority"] = round(
            majority_rate(feats["train"][1], feats["test"][1]), 4
        )
        patch = {}
        for split, _ in splits:
            y = code_targets(multi[split], attribute).to(device)
            patch[split] = (patch_pixels[split][y >= 0], y[y >= 0])
        out[f"object_patch_pixels{suffix}"] = round(
            linear_probe(*patch["train"], *patch["test"], steps), 4
        )
        labels = {s: scene_targets(single[s], attribute).to(device) for s, _ in splits}
        for name, x in (("grid_codes", grid_vecs), ("grid_pixels", raw)):
            out[f"{name}{suffix}"] = round(
                linear_probe(x["train"], labels["train"], x["test"], labels["test"], steps), 4
            )
        out[f"grid{suffix}_majority"] = round(majority_rate(labels["train"], labels["test"]), 4)
    out["chance"] = round(1 / len(ATTRIBUTES["shape"]), 4)
    out["colour_chance"] = round(1 / len(ATTRIBUTES["colour"]), 4)
    return out

"""The linear probes on a frozen VQ (`vlm_lens.zoo.native.probes`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from vlm_lens import world
from vlm_lens.zoo import native
from vlm_lens.zoo.native.build import shape_targets
from vlm_lens.zoo.native.probes import (
    ATTRIBUTES,
    code_patches,
    code_targets,
    linear_probe,
    majority_rate,
    quantised_codes,
    scene_targets,
    vq_probes,
)


def _labels(n: int, classes: int, seed: int) -> torch.Tensor:
    return torch.randint(classes, (n,), generator=torch.Generator().manual_seed(seed))


def test_probe_reads_features_that_encode_the_label() -> None:
    y, yt = _labels(300, 5, 0), _labels(200, 5, 1)
    noise = torch.Generator().manual_seed(2)

    def features(labels: torch.Tensor) -> torch.Tensor:  # one-hot label + 10 noise dimensions
        onehot = torch.nn.functional.one_hot(labels, 5).float()
        return torch.cat([onehot, torch.randn(len(labels), 10, generator=noise)], 1)

    assert linear_probe(features(y), y, features(yt), yt, steps=200) == 1.0


def test_probe_on_noise_is_near_chance() -> None:
    classes = 4
    y, yt = _labels(800, classes, 3), _labels(800, classes, 4)
    g = torch.Generator().manual_seed(5)
    x, xt = torch.randn(800, 8, generator=g), torch.randn(800, 8, generator=g)
    accuracy = linear_probe(x, y, xt, yt, steps=200)
    # 800 test draws: the standard error of a chance accuracy is about 0.015
    assert abs(accuracy - 1 / classes) < 0.07


def test_majority_rate_matches_counting() -> None:
    y, yt = _labels(97, 6, 6), _labels(51, 6, 7)
    majority = Counter(y.tolist()).most_common(1)[0][0]
    expected = sum(int(v == majority) for v in yt.tolist()) / len(yt)
    assert majority_rate(y, yt) == pytest.approx(expected)


def _long(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def test_probe_rejects_an_empty_set_and_negative_labels() -> None:
    with pytest.raises(ValueError, match="at least one"):
        linear_probe(torch.zeros(0, 2), _long(), torch.zeros(1, 2), _long(0), steps=1)
    with pytest.raises(ValueError, match="unlabelled"):
        linear_probe(torch.zeros(2, 2), _long(0, -1), torch.zeros(1, 2), _long(0), steps=1)


@pytest.mark.bad_input_types
def test_probe_rejects_labels_of_another_length() -> None:
    with pytest.raises(ValueError, match="length"):
        linear_probe(torch.zeros(3, 2), _long(0, 1), torch.zeros(1, 2), _long(0), steps=1)


def test_code_targets_shape_equals_shape_targets() -> None:
    scenes = world.task_split("relational", "train", 12, seed=0)
    processor = native.build_processor(native.build_tokenizer())
    pixels = native.pixel_values(processor, [s.image for s in scenes])
    assert torch.equal(code_targets(scenes, "shape"), shape_targets(scenes, pixels))


def test_code_targets_colour_is_the_colour_in_the_patch() -> None:
    """Every code marked colour c covers a pixel of exactly that colour; every unmarked code
    covers background (achromatic) pixels only (independent of the masks: the rendered image)."""
    scenes = world.task_split("relational", "test", 8, seed=0)
    targets = code_targets(scenes, "colour")
    side = native.IMAGE_SIZE // native.GRID
    rgb = [np.array(world.COLOURS[c]) for c in ATTRIBUTES["colour"]]
    for scene, row in zip(scenes, targets, strict=True):
        image = np.asarray(scene.image.convert("RGB"))
        for code, c in enumerate(row.tolist()):
            r, col = divmod(code, native.GRID)
            patch = image[r * side : (r + 1) * side, col * side : (col + 1) * side].reshape(-1, 3)
            if c < 0:
                assert (patch == patch[:, :1]).all()  # achromatic: the background
            else:
                assert (patch == rgb[c]).all(axis=1).any()


def test_code_patches_are_the_pixels_under_each_code() -> None:
    pixels = torch.randn(2, 3, native.IMAGE_SIZE, native.IMAGE_SIZE)
    side = native.IMAGE_SIZE // native.GRID
    patches = code_patches(pixels)
    for code in (0, 17, native.GRID * native.GRID - 1):
        r, c = divmod(code, native.GRID)
        expected = pixels[:, :, r * side : (r + 1) * side, c * side : (c + 1) * side]
        torch.testing.assert_close(patches[:, code], expected.reshape(2, -1))


def test_scene_targets_rejects_several_objects() -> None:
    scenes = world.task_split("relational", "train", 2, seed=0)
    with pytest.raises(ValueError, match="single-object"):
        scene_targets(scenes, "shape")
    with pytest.raises(ValueError, match="unknown attribute"):
        code_targets(scenes, "size")


def _tiny_vq() -> tuple[object, object]:
    settings = replace(native.Settings(), vq_latent=32, vq_dim=8, hidden=32, heads=2, ffn=64)
    tokenizer = native.build_tokenizer()
    model = native.build_model(native.build_config(tokenizer, settings), 0)
    return model.model.vqmodel.eval(), native.build_processor(tokenizer)


def test_quantised_codes_are_the_nearest_codes() -> None:
    vq, processor = _tiny_vq()
    scenes = world.world_split("train", 5, 0, max_objects=1)
    pixels = native.pixel_values(processor, [s.image for s in scenes])
    indices, vectors = quantised_codes(vq, pixels, batch=2)
    with torch.no_grad():
        z = vq.quant_conv(vq.encoder(pixels))  # type: ignore[attr-defined]
        flat = z.permute(0, 2, 3, 1).reshape(len(pixels), -1, z.shape[1])
        book = vq.quantize.embedding.weight  # type: ignore[attr-defined]
        nearest = torch.cdist(flat, book[None].expand(len(flat), -1, -1)).argmin(-1)
    assert indices.shape == (5, native.GRID * native.GRID)
    assert torch.equal(indices, nearest)
    torch.testing.assert_close(vectors, book[nearest])


def test_vq_probes_report_every_probe() -> None:
    vq, processor = _tiny_vq()
    out = vq_probes(vq, processor, n_train=12, n_test=6, steps=3)
    for suffix in ("", "_colour"):
        keys = ("object_code", "object_code_majority", "object_patch_pixels", "grid_codes")
        for key in (*keys, "grid_pixels"):
            name = key.replace("object_code", f"object_code{suffix}", 1)
            if key.startswith(("grid_", "object_patch")):
                name = f"{key}{suffix}"
            assert 0.0 <= out[name] <= 1.0, name
        assert 0.0 <= out[f"grid{suffix}_majority"] <= 1.0
    assert out["chance"] == round(1 / len(world.SHAPES), 4)
    assert out["colour_chance"] == round(1 / len(world.COLOURS), 4)

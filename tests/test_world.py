"""vlm_lens.world: determinism, disjoint splits, answers and pixels consistent with objects.

Every answer is recomputed from the question text and the scene's objects by an independent
parser; every object is checked against the pixels (exact colour on its mask, grey elsewhere)
and its shape and size are recovered from the image alone.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vlm_lens import world
from vlm_lens.world import (
    ANSWERS,
    COLOURS,
    KINDS,
    POSITIONS,
    QA,
    SHAPES,
    SIZES,
    SPLITS,
    Scene,
    WorldObject,
    all_qa,
    ask,
    caption,
    generate_scene,
    layout_key,
    load_folder,
    make_scene,
    object_mask,
    object_side,
    render_scene,
    save_split,
    scenes_to_examples,
    shape_mask,
    split_of,
    tokenize,
    vocabulary,
    world_split,
)

N_PER_SPLIT = {"train": 3000, "val": 1500, "test": 1500}


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Scene]]:
    return {split: world_split(split, n) for split, n in N_PER_SPLIT.items()}


@pytest.fixture(scope="module")
def scenes(splits: dict[str, list[Scene]]) -> list[Scene]:
    return [scene for split in SPLITS for scene in splits[split]]


def _pixels(scene: Scene) -> np.ndarray:
    return np.asarray(scene.image)


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_arguments_give_identical_scenes() -> None:
    for index, split, size in [(0, "train", 32), (7, "val", 24), (123, "test", 64)]:
        a = generate_scene(index, split, seed=3, image_size=size)
        b = generate_scene(index, split, seed=3, image_size=size)
        assert a == b
        assert a.image.tobytes() == b.image.tobytes()
        assert (a.caption, a.qa, a.label) == (b.caption, b.qa, b.label)


def test_iterating_and_listing_agree() -> None:
    listed = world_split("val", 5, seed=2, max_objects=2)
    streamed = list(world.iter_split("val", 5, seed=2, max_objects=2))
    late = list(world.iter_split("val", 2, seed=2, start=3, max_objects=2))
    assert [s.image.tobytes() for s in listed] == [s.image.tobytes() for s in streamed]
    assert listed[3:] == late


def test_other_seed_index_or_split_gives_other_scenes() -> None:
    base = world_split("train", 50, seed=0)
    other_seed = world_split("train", 50, seed=1)
    differ = sum(
        a.image.tobytes() != b.image.tobytes() for a, b in zip(base, other_seed, strict=True)
    )
    assert differ == 50
    assert sum(a.caption != b.caption for a, b in zip(base, other_seed, strict=True)) >= 40
    images = {s.image.tobytes() for s in base}
    assert len(images) == 50  # indices give different scenes
    val = world_split("val", 50, seed=0)
    assert not images & {s.image.tobytes() for s in val}


# ---------------------------------------------------------------------------------------------
# Splits


def test_splits_are_disjoint(splits: dict[str, list[Scene]]) -> None:
    keys = {name: {s.layout_key for s in scenes} for name, scenes in splits.items()}
    images = {
        name: {hashlib.sha1(s.image.tobytes()).digest() for s in scenes}
        for name, scenes in splits.items()
    }
    for a, b in itertools.combinations(SPLITS, 2):
        assert not keys[a] & keys[b], f"{a} and {b} share a layout"
        assert not images[a] & images[b], f"{a} and {b} share an image"


def test_split_is_a_function_of_the_layout(splits: dict[str, list[Scene]]) -> None:
    for name, scenes in splits.items():
        for scene in scenes:
            assert scene.split == name == split_of(scene.objects, scene.image_size)
    # the same layout on another background stays in its split
    scene = splits["test"][0]
    moved = make_scene(scene.objects, background_seed=scene.background_seed + 1)
    assert moved.split == "test"
    assert moved.image.tobytes() != scene.image.tobytes()
    # the partition is about 80/10/10 over all layouts
    probe = [split_of(generate_scene(i, "train", seed=9).objects) for i in range(300)]
    assert set(probe) == {"train"}
    counts = Counter(
        split_of([WorldObject(shape, colour, size, position, x=None, y=None)], 32)
        for shape, colour, size, position in itertools.product(SHAPES, COLOURS, SIZES, POSITIONS)
    )
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0


def test_every_split_covers_every_attribute(splits: dict[str, list[Scene]]) -> None:
    for scenes in splits.values():
        objects = [o for s in scenes for o in s.objects]
        assert {o.colour for o in objects} == set(COLOURS)
        assert {o.shape for o in objects} == set(SHAPES)
        assert {o.size for o in objects} == set(SIZES)
        assert {o.position for o in objects} == set(POSITIONS)
        assert {len(s.objects) for s in scenes} == {1, 2, 3}
        singles = {(o.colour, o.shape) for s in scenes if len(s.objects) == 1 for o in s.objects}
        assert len(singles) == len(COLOURS) * len(SHAPES)


# ---------------------------------------------------------------------------------------------
# Text


def _answer(question: str, objects: tuple[WorldObject, ...]) -> tuple[str, str]:
    """(kind, answer) of `question`, recomputed from the objects by parsing the question."""
    count_words = ["one", "two", "three", "four"]
    if question == "how many shapes are there?":
        return "count", count_words[len(objects) - 1]
    single = {
        "what colour is the shape?": "colour",
        "what shape is it?": "shape",
        "where is the shape?": "position",
        "is the shape large or small?": "size",
    }
    if question in single:
        assert len(objects) == 1, "a single-object question about a scene of several objects"
        kind = single[question]
        return kind, getattr(objects[0], kind)
    patterns = {
        "colour": r"what colour is the shape at the (.+)\?",
        "shape": r"what shape is at the (.+)\?",
        "size": r"is the shape at the (.+) large or small\?",
    }
    for kind, pattern in patterns.items():
        match = re.fullmatch(pattern, question)
        if match:
            hits = [o for o in objects if o.position == match.group(1)]
            assert len(hits) == 1, f"{question!r} names {len(hits)} objects"
            return kind, getattr(hits[0], kind)
    match = re.fullmatch(r"where is the (\w+) (\w+)\?", question)
    assert match, f"unknown question {question!r}"
    hits = [o for o in objects if (o.colour, o.shape) == match.groups()]
    assert len(hits) == 1, f"{question!r} names {len(hits)} objects"
    return "position", hits[0].position


def test_every_answer_follows_from_the_objects(scenes: list[Scene]) -> None:
    for scene in scenes:
        assert [qa.kind for qa in scene.qa] == list(KINDS)
        for qa in (*scene.qa, *all_qa(scene)):
            assert _answer(qa.question, scene.objects) == (qa.kind, qa.answer)
            assert qa.answer in ANSWERS[qa.kind]


def test_count_answers_match_the_objects(scenes: list[Scene]) -> None:
    counts = Counter(len(s.objects) for s in scenes)
    assert set(counts) == {1, 2, 3} and min(counts.values()) > 1000
    for scene in scenes:
        assert scene.answer("count") == ANSWERS["count"][len(scene.objects) - 1]
    four = world_split("train", 20, min_objects=4, max_objects=4)
    assert {s.answer("count") for s in four} == {"four"}


def test_scene_invariants(scenes: list[Scene]) -> None:
    for scene in scenes:
        objects = scene.objects
        positions = [POSITIONS.index(o.position) for o in objects]
        assert positions == sorted(set(positions))  # one object per cell, in reading order
        assert len({(o.colour, o.shape) for o in objects}) == len(objects)
        assert scene.label == f"{objects[0].colour} {objects[0].shape}"
        assert scene.caption == caption(objects)


def test_captions() -> None:
    red = WorldObject("circle", "red", "large", "top left")
    blue = WorldObject("square", "blue", "small", "bottom right")
    green = WorldObject("triangle", "green", "small", "top right")
    assert caption([red]) == "a large red circle at the top left."
    assert caption([blue, red]) == (
        "two shapes: a large red circle at the top left and a small blue square at the bottom "
        "right."
    )
    assert caption([red, green, blue]).startswith(
        "three shapes: a large red circle at the top left, a small green triangle at the top right"
    )


def test_vocabulary_is_closed_and_tight(scenes: list[Scene]) -> None:
    vocab = vocabulary()
    assert list(vocab) == sorted(set(vocab))
    used: set[str] = set()
    for scene in scenes:
        texts = [scene.caption, scene.label]
        texts += [text for qa in all_qa(scene) for text in (qa.question, qa.answer)]
        for text in texts:
            words = tokenize(text)
            assert set(words) <= set(vocab), text
            assert "".join(words) == text.replace(" ", "")  # tokenize drops nothing
            used.update(words)
    assert used | {"four"} == set(vocab)  # no word the world never says ("four": 4 objects)
    for answers in ANSWERS.values():
        for answer in answers:
            assert set(tokenize(answer)) <= set(vocab)


@pytest.mark.bad_input_types
def test_ask_refuses_ambiguous_questions() -> None:
    objects = [
        WorldObject("circle", "red", "large", "top left"),
        WorldObject("square", "red", "small", "top right"),
    ]
    assert ask("colour", objects, 1).answer == "red"
    assert ask("position", objects, 0).question == "where is the red circle?"
    with pytest.raises(ValueError, match="target"):
        ask("colour", objects)
    twins = [objects[0], replace(objects[0], position="bottom left")]
    with pytest.raises(ValueError, match="unique"):
        ask("position", twins, 0)
    with pytest.raises(ValueError, match="kind"):
        ask("texture", objects, 0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Pixels


def test_images_are_rgb_of_the_requested_size() -> None:
    for size in (16, 24, 32, 48, 64):
        for scene in world_split("train", 5, image_size=size, max_objects=4):
            assert scene.image.mode == "RGB" and scene.image.size == (size, size)
            assert _pixels(scene).dtype == np.uint8


def test_objects_are_painted_where_declared_and_nowhere_else(scenes: list[Scene]) -> None:
    for scene in scenes[::4]:
        pixels = _pixels(scene).astype(int)
        chromatic = (pixels.max(axis=2) - pixels.min(axis=2)) > 0
        painted = np.zeros(chromatic.shape, dtype=bool)
        for obj in scene.objects:
            mask = object_mask(obj, scene.image_size)
            assert (pixels[mask] == COLOURS[obj.colour]).all()
            # the object's colour is the only non-grey colour in its bounding box
            x, y, side = obj.box(scene.image_size)
            box = pixels[y : y + side, x : x + side].reshape(-1, 3)
            box = box[box.max(axis=1) > box.min(axis=1)]
            colours, counts = np.unique(box, axis=0, return_counts=True)
            assert len(colours) == 1
            assert tuple(colours[counts.argmax()]) == COLOURS[obj.colour]
            painted |= mask
        assert (chromatic == painted).all()  # background is grey; objects are not


def _recognise(pixels: np.ndarray, position: str, image_size: int) -> tuple[str, str]:
    """(shape, size) read from the image alone: the chromatic pixels of the cell."""
    bounds = ((0, image_size // 2), (image_size // 2, image_size))
    (y0, y1), (x0, x1) = (bounds[i] for i in divmod(POSITIONS.index(position), 2))
    cell = pixels[y0:y1, x0:x1].astype(int)
    mask = (cell.max(axis=2) - cell.min(axis=2)) > 0
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    matches = [
        (shape, size)
        for shape in SHAPES
        for size in SIZES
        if crop.shape == (object_side(size, image_size),) * 2
        and (crop == shape_mask(shape, crop.shape[0])).all()
    ]
    assert len(matches) == 1, matches
    return matches[0]


def test_shape_and_size_can_be_read_from_the_image(scenes: list[Scene]) -> None:
    for scene in scenes[::3]:
        pixels = _pixels(scene)
        for obj in scene.objects:
            assert _recognise(pixels, obj.position, scene.image_size) == (obj.shape, obj.size)
    for size in (16, 24, 48, 64):
        for scene in world_split("val", 30, image_size=size, max_objects=4):
            for obj in scene.objects:
                assert _recognise(_pixels(scene), obj.position, size) == (obj.shape, obj.size)


def test_shapes_are_distinguishable_at_every_side() -> None:
    for side in range(5, 33):
        masks = {shape: shape_mask(shape, side) for shape in SHAPES}
        for a, b in itertools.combinations(SHAPES, 2):
            differ = (masks[a] != masks[b]).sum()
            assert differ >= 0.1 * side * side, (side, a, b, differ)
        for mask in masks.values():  # every shape is left-right symmetric and fills its box
            assert (mask == mask[:, ::-1]).all()
            assert mask[:, 0].any() and mask[:, -1].any() and mask[-1].any()
    # same position and size, different shapes -> different images
    images = {
        render_scene([WorldObject(shape, "red", "small", "top left")], 0).tobytes()
        for shape in SHAPES
    }
    assert len(images) == len(SHAPES)


def test_sizes_and_placement() -> None:
    assert (object_side("small"), object_side("large")) == (8, 14)
    for size in range(16, 65):
        small, large = object_side("small", size), object_side("large", size)
        assert 5 <= small < large < size // 2
    for scene in world_split("train", 200, max_objects=4):
        for a, b in itertools.combinations(scene.objects, 2):
            grown = np.zeros((34, 34), dtype=bool)  # a's mask dilated by 1 px
            mask = object_mask(a, 32)
            for dy, dx in itertools.product((0, 1, 2), repeat=2):
                grown[dy : dy + 32, dx : dx + 32] |= mask
            assert not (grown[1:33, 1:33] & object_mask(b, 32)).any()  # never touch


def test_backgrounds_vary_and_stay_grey() -> None:
    levels = []
    for seed in range(40):
        bg = world.render_background(seed).astype(int)
        assert (bg[..., 0] == bg[..., 1]).all() and (bg[..., 1] == bg[..., 2]).all()
        levels.append(bg.mean())
        assert bg.std() > 0.5  # noise or texture
    assert max(levels) - min(levels) > 100


def test_bad_objects_are_refused() -> None:
    ok = WorldObject("circle", "red", "large", "top left")
    with pytest.raises(ValueError, match="colour"):
        render_scene([replace(ok, colour="pink")], 0)
    with pytest.raises(ValueError, match="position"):
        render_scene([ok, replace(ok, shape="square")], 0)
    with pytest.raises(ValueError, match="fit"):
        render_scene([replace(ok, x=10, y=0)], 0)
    with pytest.raises(ValueError, match="split"):
        generate_scene(0, "holdout")
    with pytest.raises(ValueError, match="image_size"):
        generate_scene(0, image_size=8)
    with pytest.raises(ValueError, match="max_objects"):
        generate_scene(0, max_objects=5)


# ---------------------------------------------------------------------------------------------
# Files and examples


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    scenes = world_split("val", 6) + world_split("test", 4, image_size=24)
    save_split(scenes, tmp_path)
    loaded = load_folder(tmp_path)
    assert loaded == scenes
    for a, b in zip(scenes, loaded, strict=True):
        assert a.image.tobytes() == b.image.tobytes()
        assert b.image.mode == "RGB"
        assert layout_key(b.objects, b.image_size) == a.layout_key
    with pytest.raises(ValueError, match="index"):
        save_split([scenes[0], scenes[0]], tmp_path / "dup")
    with pytest.raises(FileNotFoundError):
        load_folder(tmp_path / "missing")


def test_scenes_to_examples() -> None:
    scenes = world_split("test", 3)
    captions = scenes_to_examples(scenes)
    assert [e.text for e in captions] == [s.caption for s in scenes]
    assert [e.label for e in captions] == [s.label for s in scenes]
    shapes = scenes_to_examples(scenes, kind="shape", template="<image> {text} answer:")
    for example, scene in zip(shapes, scenes, strict=True):
        assert example.text == f"<image> {scene.question('shape').question} answer:"
        assert example.label == scene.answer("shape") == example.metadata["answer"]
        assert example.id == f"test-{scene.index}"
        assert example.images is scene.image


def test_hand_made_scenes_and_counterfactuals() -> None:
    red = WorldObject("diamond", "red", "small", "bottom left")
    a = make_scene([red], background_seed=5)
    b = make_scene([replace(red, colour="purple")], background_seed=5)
    diff = np.any(_pixels(a) != _pixels(b), axis=2)
    assert (diff == object_mask(red)).all()  # only the object's pixels change
    assert b.qa == (
        QA("what colour is the shape?", "purple", "colour"),
        QA("what shape is it?", "diamond", "shape"),
        QA("where is the shape?", "bottom left", "position"),
        QA("is the shape large or small?", "small", "size"),
        QA("how many shapes are there?", "one", "count"),
    )

"""A procedural, seeded world of tiny RGB scenes with labels, captions and question-answer pairs.

The world is the training and analysis set of vlm_lens's model organisms (tiny VLMs) and the
built-in image set of the ``vlm-lens`` command. It is small on purpose: a model of a few hundred
thousand parameters can learn it.

**Scenes.** An image (default 32x32 RGB; any size from 16 up) holds 1 to 4 objects (1 to 3 by
default) on a grey background. The image is cut into a 2x2 grid; each object sits in its own cell
at a seeded offset inside that cell, at least 1 px from the cell's inner edges (so objects never
overlap or touch). An object has

- a colour from `COLOURS` (red, orange, yellow, green, blue, purple), painted flat with the exact
  palette RGB value;
- a shape from `SHAPES` (square, circle, triangle, cross, diamond, ring), drawn without
  anti-aliasing (`shape_mask`);
- a size from `SIZES` (small: a quarter of the image side, 8 px at 32; large: 7/16 of it, 14 px
  at 32; see `object_side`); images of at least 24 px keep the sizes and small shapes clearly
  apart, 16 px works but the two sizes are 5 and 7 px;
- a position from `POSITIONS` (top left, top right, bottom left, bottom right), its grid cell.

In a scene with several objects, every object has its own position and its own (colour, shape)
pair. The background is achromatic (R = G = B at every pixel): a grey level with a seeded
gradient, stripes or checker texture and mild noise, so it is never confusable with an object
colour, and the object pixels of an image are exactly its non-grey pixels.

**Text.** Lower-case, fixed templates, a closed vocabulary (`vocabulary`, split by `tokenize`):

- caption: ``"a large red circle at the top left."`` or ``"two shapes: a small blue square at
  the top left and a large green triangle at the bottom right."`` (objects in reading order);
- questions (`QA`), one per kind in ``scene.qa``; a one-object scene uses `SINGLE_QUESTIONS`
  (``"what colour is the shape?"``); a scene with several objects uses `REFERRING_QUESTIONS`,
  which name the object by its position (unique in a scene) or, for the position question, by
  its colour and shape (also unique): ``"what colour is the shape at the top left?"``,
  ``"where is the red circle?"``. ``"how many shapes are there?"`` is asked of every scene.
  Every question has exactly one correct answer, taken from the closed sets `ANSWERS`.
  `all_qa` lists every question a scene can answer.

**Determinism.** ``generate_scene(index, split, seed, ...)`` depends only on its arguments (it
draws from ``numpy.random.default_rng([seed, split_id, index])``): the same call gives the same
pixels and text on every machine.

**Disjoint splits.** A scene's split is a function of its layout (`layout_key`: the image size
and the exact placement, size, colour and shape of every object, in reading order): the layout's
hash (BLAKE2b) modulo 10 gives a bucket, buckets 0-7 are ``"train"``, 8 is ``"val"`` and 9 is
``"test"`` (`split_of`). The generator of a split redraws a layout until its bucket belongs to
that split. So train, val and test never share a layout, let alone a scene (same objects on
another background included), while every colour, shape, size and position appears in every
split with the same frequencies (the bucket is a hash, unrelated to the attributes). A held-out
scene differs from every training scene at least in the exact pixel placement of an object.

Example:
    >>> scene = generate_scene(0, "train", seed=0)
    >>> scene.image.size, scene.image.mode, scene.split
    ((32, 32), 'RGB', 'train')
    >>> all(qa.answer in ANSWERS[qa.kind] for qa in scene.qa)
    True
    >>> scene = make_scene([WorldObject("circle", "red", "large", "top left")])
    >>> scene.caption, scene.label
    ('a large red circle at the top left.', 'red circle')
    >>> [(qa.question, qa.answer) for qa in scene.qa][:2]
    [('what colour is the shape?', 'red'), ('what shape is it?', 'circle')]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from vlm_lens.data.examples import Example

Kind = Literal["colour", "shape", "position", "size", "count"]
"""The kind of a question."""

KINDS: tuple[Kind, ...] = get_args(Kind)
"""Every question kind, in the order of ``scene.qa``."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 130, 20),
    "yellow": (235, 225, 40),
    "green": (40, 170, 50),
    "blue": (40, 80, 230),
    "purple": (150, 50, 200),
}
"""Colour name -> the exact RGB value its objects are painted with (all strongly saturated)."""

SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "cross", "diamond", "ring")
"""Shape names (see `shape_mask`)."""

SIZES: tuple[str, ...] = ("small", "large")
"""Size names (see `object_side`)."""

POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
"""Position names: the cells of the 2x2 grid, in reading order."""

NUMBERS: tuple[str, ...] = ("one", "two", "three", "four")
"""Count words: ``NUMBERS[n - 1]`` is the answer for ``n`` objects."""

MAX_OBJECTS = len(POSITIONS)
"""At most one object per grid cell."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Split names; ``SPLITS.index(split)`` is the split id in the seed."""

SPLIT_BUCKETS: dict[str, tuple[int, ...]] = {
    "train": (0, 1, 2, 3, 4, 5, 6, 7),
    "val": (8,),
    "test": (9,),
}
"""Layout-hash buckets (hash mod 10) of each split: an 80/10/10 partition of all layouts."""

ANSWERS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": POSITIONS,
    "size": SIZES,
    "count": NUMBERS,
}
"""Kind -> every possible answer of a question of that kind (a closed set)."""

SINGLE_QUESTIONS: dict[str, str] = {
    "colour": "what colour is the shape?",
    "shape": "what shape is it?",
    "position": "where is the shape?",
    "size": "is the shape large or small?",
    "count": "how many shapes are there?",
}
"""The question of each kind in a one-object scene."""

REFERRING_QUESTIONS: dict[str, str] = {
    "colour": "what colour is the shape at the {position}?",
    "shape": "what shape is at the {position}?",
    "position": "where is the {colour} {shape}?",
    "size": "is the shape at the {position} large or small?",
    "count": "how many shapes are there?",
}
"""The question of each kind about one object of a scene, named by its position (unique) or, for
``"position"``, by its colour and shape (unique too)."""

_CAPTION_WORDS = ("a", "at", "the", "and", "shapes", ":", ",", ".")
_TOKEN = re.compile(r"[a-z]+|[^\sa-z]")
_MAX_TRIES = 100_000


@dataclass(frozen=True)
class WorldObject:
    """One object of a scene.

    Attributes:
        shape: one of `SHAPES`.
        colour: one of `COLOURS`.
        size: one of `SIZES`.
        position: one of `POSITIONS`: the 2x2 grid cell the object lies in.
        x: column of the object's top-left pixel, or ``None`` to centre it in its cell.
        y: row of the object's top-left pixel, or ``None`` to centre it in its cell.

    Example:
        >>> obj = WorldObject("circle", "red", "large", "bottom right")
        >>> obj.box(32)  # (x, y, side): centred in the bottom-right 16x16 cell
        (17, 17, 14)
        >>> obj.name
        'red circle'
    """

    shape: str
    colour: str
    size: str
    position: str
    x: int | None = None
    y: int | None = None

    @property
    def name(self) -> str:
        """``"{colour} {shape}"``, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"

    def box(self, image_size: int = 32) -> tuple[int, int, int]:
        """``(x, y, side)``: the top-left pixel and side of the object's square bounding box.

        Raises:
            ValueError: if a name is unknown or the box leaves the object's grid cell.
        """
        _check_names(self)
        side = object_side(self.size, image_size)
        (x_lo, x_hi), (y_lo, y_hi) = _cell_range(self.position, image_size)
        x = x_lo + (x_hi - x_lo - side) // 2 if self.x is None else self.x
        y = y_lo + (y_hi - y_lo - side) // 2 if self.y is None else self.y
        if not (x_lo <= x <= x_hi - side and y_lo <= y <= y_hi - side):
            raise ValueError(
                f"{self} does not fit in its {self.position} cell of a {image_size}px image "
                f"(x in [{x_lo}, {x_hi - side}], y in [{y_lo}, {y_hi - side}]); move it or "
                "leave x and y as None to centre it"
            )
        return x, y, side

    def placed(self, image_size: int = 32) -> WorldObject:
        """The same object with `x` and `y` filled in (centred in its cell where ``None``)."""
        x, y, _ = self.box(image_size)
        return replace(self, x=x, y=y)


@dataclass(frozen=True)
class QA:
    """A question about a scene, its one correct answer and its kind.

    Example:
        >>> QA("what shape is it?", "circle", "shape").answer in ANSWERS["shape"]
        True
    """

    question: str
    answer: str
    kind: str
    """A local `Kind` or a relational kind (`RELATIONAL_KINDS`)."""


@dataclass(frozen=True)
class Scene:
    """A rendered scene with its objects and text.

    Attributes:
        image: the RGB image (``image_size`` x ``image_size``).
        objects: the objects in reading order of their positions, placed (``x``, ``y`` set).
        caption: one sentence describing every object.
        qa: one `QA` per kind, in the order of `KINDS`.
        label: ``"{colour} {shape}"`` of ``objects[0]`` (the only object of a one-object scene),
            a class label for classification analyses.
        index: the scene's index in its split.
        split: ``"train"``, ``"val"`` or ``"test"``; always ``split_of(objects, image_size)``.
        background_seed: the seed of the background (see `render_scene`).
        image_size: side of the image in pixels.
        seed: the world seed the scene was generated with.

    Example:
        >>> scene = generate_scene(3, "val")
        >>> scene.split == split_of(scene.objects, scene.image_size), scene.answer("count")
        (True, 'one')
    """

    image: Image.Image = field(repr=False, compare=False)
    objects: tuple[WorldObject, ...]
    caption: str
    qa: tuple[QA, ...]
    label: str
    index: int
    split: str
    background_seed: int = 0
    image_size: int = 32
    seed: int = 0

    def answer(self, kind: Kind) -> str:
        """The answer of the scene's question of `kind`."""
        return self.question(kind).answer

    def question(self, kind: Kind) -> QA:
        """The scene's `QA` of `kind`."""
        for qa in self.qa:
            if qa.kind == kind:
                return qa
        raise KeyError(f"no question of kind {kind!r}; kinds are {KINDS}")

    @property
    def layout_key(self) -> str:
        """The scene's `layout_key` (what its split is a function of)."""
        return layout_key(self.objects, self.image_size)

    def record(self) -> dict[str, Any]:
        """Everything but the image, as a JSON-serialisable dict (see `save_split`)."""
        return {
            "index": self.index,
            "split": self.split,
            "seed": self.seed,
            "image_size": self.image_size,
            "background_seed": self.background_seed,
            "label": self.label,
            "caption": self.caption,
            "objects": [asdict(obj) for obj in self.objects],
            "qa": [asdict(qa) for qa in self.qa],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], image: Image.Image) -> Scene:
        """The scene of a `record` and its image."""
        return cls(
            image=image,
            objects=tuple(WorldObject(**obj) for obj in record["objects"]),
            caption=record["caption"],
            qa=tuple(QA(**qa) for qa in record["qa"]),
            label=record["label"],
            index=int(record["index"]),
            split=record["split"],
            background_seed=int(record["background_seed"]),
            image_size=int(record["image_size"]),
            seed=int(record["seed"]),
        )


# --------------------------------------------------------------------------------------------
# Geometry and drawing


def object_side(size: str, image_size: int = 32) -> int:
    """Side in pixels of an object of `size` in an `image_size` image.

    Small is ``max(5, image_size // 4)``, large is ``max(small + 2, 7 * image_size // 16)``,
    capped at the grid cell less its 1 px gutter (``image_size // 2 - 1``).

    Example:
        >>> object_side("small"), object_side("large"), object_side("large", 64)
        (8, 14, 28)
    """
    _check_image_size(image_size)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; sizes are {SIZES}")
    small = max(5, image_size // 4)
    if size == "small":
        return small
    return min(image_size // 2 - 1, max(small + 2, 7 * image_size // 16))


def shape_mask(shape: str, side: int) -> np.ndarray:
    """The ``[side, side]`` boolean mask of `shape`, drawn without anti-aliasing.

    A pixel is in the shape when its centre is (exact integer arithmetic, no rounding).

    Example:
        >>> shape_mask("diamond", 6).astype(int)
        array([[0, 0, 1, 1, 0, 0],
               [0, 1, 1, 1, 1, 0],
               [1, 1, 1, 1, 1, 1],
               [1, 1, 1, 1, 1, 1],
               [0, 1, 1, 1, 1, 0],
               [0, 0, 1, 1, 0, 0]])
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")
    if side < 4:
        raise ValueError(f"side must be at least 4 pixels to draw a shape, got {side}")
    # Pixel-centre offsets from the box centre, in half pixels: odd for even sides, even for odd.
    a = 2 * np.arange(side) + 1 - side
    col, row = a[None, :], a[:, None]
    d2 = col**2 + row**2
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "circle":
        return d2 <= side**2
    if shape == "ring":  # hole radius 5/9 of the outer radius
        return (d2 <= side**2) & (81 * d2 > 25 * side**2)
    if shape == "diamond":
        return np.abs(col) + np.abs(row) <= side
    if shape == "triangle":  # apex up, base on the bottom row
        return 2 * np.abs(col) <= row + side + 1
    # cross: two bars about 0.3 side wide, with the parity of `side` so that it is symmetric
    arm = round(0.3 * side)
    if (side - arm) % 2:
        arm = arm - 1 if arm > 1 else arm + 1
    return (np.abs(col) < arm) | (np.abs(row) < arm)


def object_mask(obj: WorldObject, image_size: int = 32) -> np.ndarray:
    """The ``[image_size, image_size]`` boolean mask of the pixels `obj` paints.

    Example:
        >>> int(object_mask(WorldObject("square", "red", "small", "top left")).sum())
        64
    """
    x, y, side = obj.box(image_size)
    mask = np.zeros((image_size, image_size), dtype=bool)
    mask[y : y + side, x : x + side] = shape_mask(obj.shape, side)
    return mask


def render_background(background_seed: int, size: int = 32) -> np.ndarray:
    """The ``[size, size, 3]`` uint8 achromatic background of `background_seed`.

    A grey level in [35, 215], one of flat / gradient / stripes / checker (low contrast), and
    mild noise; the same value in the three channels at every pixel.

    Example:
        >>> bg = render_background(7)
        >>> bg.shape, bool((bg[..., 0] == bg[..., 2]).all())
        ((32, 32, 3), True)
    """
    _check_image_size(size)
    rng = np.random.default_rng(background_seed)
    level = rng.uniform(35, 215)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    texture = int(rng.integers(4))
    grey = np.full((size, size), level)
    if texture == 1:  # linear gradient in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        grey += rng.uniform(15, 40) * ((np.cos(angle) * xx + np.sin(angle) * yy) - 0.5)
    elif texture == 2:  # soft stripes
        angle = rng.choice([0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4])
        period = rng.uniform(0.12, 0.35)
        phase = np.cos(angle) * xx + np.sin(angle) * yy
        grey += rng.uniform(5, 15) * np.sin(2 * np.pi * phase / period + rng.uniform(0, 6.3))
    elif texture == 3:  # low-contrast checker
        cell = int(rng.integers(3, 9))
        iy, ix = np.mgrid[0:size, 0:size] // cell
        grey += rng.uniform(5, 14) * (((iy + ix) % 2) - 0.5)
    grey += rng.normal(0, rng.uniform(1.5, 5.0), size=(size, size))
    grey = np.clip(np.rint(grey), 10, 245).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def render_scene(
    objects: Sequence[WorldObject], background_seed: int, size: int = 32
) -> Image.Image:
    """Draw `objects` over the background of `background_seed` as a ``size`` x ``size`` image.

    Objects are painted flat with their exact `COLOURS` value over an achromatic background, so
    an object's pixels are exactly the non-grey pixels of its `object_mask`.

    Args:
        objects: at most one per position (``x``/``y`` of ``None`` are centred in the cell).
        background_seed: seed of the background (`render_background`).
        size: image side in pixels (at least 16).

    Raises:
        ValueError: for unknown names, two objects at one position, or an object outside its cell.

    Example:
        >>> img = render_scene([WorldObject("square", "blue", "large", "top right")], 0)
        >>> img.getpixel((24, 8)) == COLOURS["blue"]
        True
    """
    _check_objects(objects)
    pixels = render_background(background_seed, size)
    for obj in objects:
        pixels[object_mask(obj, size)] = COLOURS[obj.colour]
    return Image.fromarray(pixels, mode="RGB")


# --------------------------------------------------------------------------------------------
# Text


def tokenize(text: str) -> list[str]:
    """Split world text into words and punctuation marks (the units of `vocabulary`).

    Example:
        >>> tokenize("two shapes: a small red ring at the top left and ...")[:4]
        ['two', 'shapes', ':', 'a']
    """
    return _TOKEN.findall(text.lower())


def vocabulary(*tasks: str) -> tuple[str, ...]:
    """Every word and punctuation mark (``":"``, ``","``, ``"."``, ``"?"``) that captions,
    questions and answers of `tasks` use, sorted.

    Args:
        *tasks: names from `TASKS`; none: ``"local"`` alone (captions and the local questions,
            the words the shipped organisms were trained with). ``vocabulary(*TASKS)`` covers
            every text of both tasks (the relational questions add counting, comparison and
            spatial words, see `vlm_lens.world.relational`).

    Raises:
        ValueError: for an unknown task name.

    Example:
        >>> vocab = vocabulary()
        >>> len(vocab), vocab[:6]
        (42, (',', '.', ':', '?', 'a', 'and'))
        >>> set(vocab) < set(vocabulary(*TASKS))
        True
    """
    from vlm_lens.world import relational

    for task in tasks:
        if task not in relational.TASKS:
            raise ValueError(f"unknown task {task!r}; tasks are {relational.TASKS}")
    words = set(_CAPTION_WORDS)
    for template in (*SINGLE_QUESTIONS.values(), *REFERRING_QUESTIONS.values()):
        words.update(tokenize(re.sub(r"\{\w+\}", " ", template)))
    for answers in ANSWERS.values():
        for answer in answers:
            words.update(tokenize(answer))
    if "relational" in tasks:
        words.update(relational.relational_words())
    return tuple(sorted(words))


def caption(scene_or_objects: Scene | Sequence[WorldObject]) -> str:
    """The one-sentence caption of a scene (objects in reading order).

    Example:
        >>> caption([WorldObject("ring", "green", "small", "top left"),
        ...          WorldObject("cross", "blue", "large", "bottom right")])
        'two shapes: a small green ring at the top left and a large blue cross at the bottom right.'
    """
    objects = _ordered(_objects_of(scene_or_objects))
    phrases = [f"a {o.size} {o.colour} {o.shape} at the {o.position}" for o in objects]
    if len(phrases) == 1:
        return phrases[0] + "."
    listed = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{NUMBERS[len(phrases) - 1]} shapes: {listed}."


def answer_of(kind: Kind, obj: WorldObject | None = None, n_objects: int = 1) -> str:
    """The answer of a question of `kind` about `obj` (or, for ``"count"``, the scene).

    Example:
        >>> answer_of("position", WorldObject("circle", "red", "large", "top left"))
        'top left'
        >>> answer_of("count", n_objects=3)
        'three'
    """
    if kind == "count":
        return NUMBERS[n_objects - 1]
    if obj is None:
        raise ValueError(f"a {kind!r} answer needs the object it is about")
    return str(getattr(obj, kind))


def ask(kind: Kind, objects: Sequence[WorldObject], target: int | None = None) -> QA:
    """The `QA` of `kind` about ``objects[target]``.

    With ``target=None`` (only for a one-object scene, or for ``"count"``) the question is the
    `SINGLE_QUESTIONS` form; otherwise the `REFERRING_QUESTIONS` form names the object.

    Raises:
        ValueError: for ``target=None`` on a scene with several objects (except ``"count"``), or
            a referring question whose referent is not unique.

    Example:
        >>> objs = [WorldObject("circle", "red", "large", "top left"),
        ...         WorldObject("square", "blue", "small", "top right")]
        >>> ask("shape", objs, 1)
        QA(question='what shape is at the top right?', answer='square', kind='shape')
    """
    if kind not in KINDS:
        raise ValueError(f"unknown question kind {kind!r}; kinds are {KINDS}")
    if kind == "count":
        return QA(SINGLE_QUESTIONS["count"], NUMBERS[len(objects) - 1], kind)
    if target is None:
        if len(objects) != 1:
            raise ValueError(
                f"a {kind!r} question about a scene of {len(objects)} objects must name its "
                "target object; pass target"
            )
        return QA(SINGLE_QUESTIONS[kind], answer_of(kind, objects[0]), kind)
    obj = objects[target]
    key = (lambda o: (o.colour, o.shape)) if kind == "position" else (lambda o: o.position)
    if sum(key(o) == key(obj) for o in objects) != 1:
        raise ValueError(f"the {kind!r} question about {obj} would not name a unique object")
    question = REFERRING_QUESTIONS[kind].format(
        position=obj.position, colour=obj.colour, shape=obj.shape
    )
    return QA(question, answer_of(kind, obj), kind)


def all_qa(scene_or_objects: Scene | Sequence[WorldObject]) -> tuple[QA, ...]:
    """Every question the world asks about a scene: the count question, the referring questions
    about each object (reading order) and, in a one-object scene, the single-object questions.

    Example:
        >>> len(all_qa([WorldObject("circle", "red", "large", "top left")]))
        9
    """
    objects = _ordered(_objects_of(scene_or_objects))
    out = [ask("count", objects)]
    if len(objects) == 1:
        out += [ask(kind, objects) for kind in KINDS if kind != "count"]
    for i in range(len(objects)):
        out += [ask(kind, objects, i) for kind in KINDS if kind != "count"]
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Splits and generation


def layout_key(objects: Sequence[WorldObject], image_size: int = 32) -> str:
    """A canonical string of the layout (image size, objects placed, in reading order).

    Example:
        >>> layout_key([WorldObject("circle", "red", "large", "top left")])
        '32|top left:large:red:circle@0,0'
    """
    parts = []
    for obj in _ordered(objects):
        x, y, _ = obj.box(image_size)
        parts.append(f"{obj.position}:{obj.size}:{obj.colour}:{obj.shape}@{x},{y}")
    return f"{image_size}|" + ";".join(parts)


def split_of(objects: Sequence[WorldObject], image_size: int = 32) -> str:
    """The split a layout belongs to: its `layout_key` hash mod 10, mapped by `SPLIT_BUCKETS`.

    Example:
        >>> split_of([WorldObject("circle", "red", "large", "top left")]) in SPLITS
        True
    """
    digest = hashlib.blake2b(layout_key(objects, image_size).encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") % 10
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def make_scene(
    objects: Sequence[WorldObject],
    background_seed: int = 0,
    image_size: int = 32,
    *,
    index: int = 0,
    seed: int = 0,
    qa_seed: int | None = None,
) -> Scene:
    """A `Scene` of hand-picked objects (e.g. counterfactual pairs that differ in one object
    attribute); its split is ``split_of(objects, image_size)``.

    Args:
        objects: at most one per position, with distinct (colour, shape) pairs.
        background_seed: seed of the background.
        image_size: image side in pixels.
        index: stored as the scene's index.
        seed: stored as the scene's world seed.
        qa_seed: seed of the choice of which object each question of a multi-object scene is
            about (default: `background_seed`).

    Example:
        >>> red = WorldObject("circle", "red", "large", "top left")
        >>> a = make_scene([red], background_seed=1)
        >>> b = make_scene([replace(red, colour="blue")], background_seed=1)
        >>> a.answer("colour"), b.answer("colour"), a.answer("shape") == b.answer("shape")
        ('red', 'blue', True)
    """
    _check_image_size(image_size)
    placed = tuple(obj.placed(image_size) for obj in _ordered(objects))
    _check_objects(placed)
    rng = np.random.default_rng(background_seed if qa_seed is None else qa_seed)
    return _build_scene(placed, background_seed, image_size, index, seed, rng)


def generate_scene(
    index: int,
    split: str = "train",
    seed: int = 0,
    image_size: int = 32,
    *,
    min_objects: int = 1,
    max_objects: int = 3,
) -> Scene:
    """The scene number `index` of `split`, a function of its arguments only.

    The number of objects is uniform in ``[min_objects, max_objects]``; then positions (distinct),
    colours and shapes (distinct pairs), sizes and offsets in the cells are drawn uniformly and
    redrawn until the layout belongs to `split` (see `split_of`).

    Args:
        index: the scene's index (>= 0).
        split: ``"train"``, ``"val"`` or ``"test"``.
        seed: the world seed.
        image_size: image side in pixels (>= 16; 32 is the default the models use).
        min_objects: fewest objects in a scene (>= 1).
        max_objects: most objects in a scene (<= 4).

    Example:
        >>> a, b = generate_scene(5, "test"), generate_scene(5, "test")
        >>> a == b and a.image.tobytes() == b.image.tobytes()
        True
    """
    _check_image_size(image_size)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {SPLITS}")
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, "
            f"got min_objects={min_objects}, max_objects={max_objects}"
        )
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    n = int(rng.integers(min_objects, max_objects + 1))
    for _ in range(_MAX_TRIES):
        objects = _draw_objects(rng, n, image_size)
        if split_of(objects, image_size) == split:
            break
    else:  # pragma: no cover - probability ~0.9**100000
        raise RuntimeError(f"no {split} layout found in {_MAX_TRIES} draws")
    background_seed = int(rng.integers(2**31 - 1))
    return _build_scene(objects, background_seed, image_size, index, seed, rng)


def iter_split(
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    *,
    start: int = 0,
    **options: Any,
) -> Iterator[Scene]:
    """Scenes ``start, start + 1, ...`` of `split`, lazily (endless when `n` is ``None``).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        n: how many scenes, or ``None`` for an endless stream.
        seed: the world seed.
        start: index of the first scene.
        **options: `generate_scene` options (``image_size``, ``min_objects``, ``max_objects``).

    Example:
        >>> [s.index for s in iter_split("val", 3, start=10)]
        [10, 11, 12]
    """
    index = start
    while n is None or index < start + n:
        yield generate_scene(index, split, seed, **options)
        index += 1


def world_split(split: str = "train", n: int = 1000, seed: int = 0, **options: Any) -> list[Scene]:
    """Scenes ``0 .. n - 1`` of `split` (see `iter_split` for the options).

    Example:
        >>> scenes = world_split("test", 4, image_size=24, max_objects=1)
        >>> [len(s.objects) for s in scenes], scenes[0].image.size
        ([1, 1, 1, 1], (24, 24))
    """
    return list(iter_split(split, n, seed, **options))


# --------------------------------------------------------------------------------------------
# Files and examples


def save_split(scenes: Sequence[Scene], folder: str | os.PathLike[str]) -> Path:
    """Write each scene as ``{split}_{index:06d}.png`` and all their text to ``labels.jsonl``.

    Each line of ``labels.jsonl`` is `Scene.record` plus ``"file"`` (the PNG's name). An existing
    ``labels.jsonl`` in `folder` is replaced.

    Returns:
        The path of ``labels.jsonl``.

    Raises:
        ValueError: if two scenes would get the same file name.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> path = save_split(world_split("val", 2), folder)
        >>> sorted(p.name for p in path.parent.iterdir())
        ['labels.jsonl', 'val_000000.png', 'val_000001.png']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{scene.split}_{scene.index:06d}.png" for scene in scenes]
    if len(set(names)) != len(names):
        raise ValueError("two scenes share a split and an index; give them distinct indices")
    lines = []
    for scene, name in zip(scenes, names, strict=True):
        scene.image.save(folder / name)
        lines.append(json.dumps({"file": name, **scene.record()}))
    path = folder / "labels.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def load_folder(folder: str | os.PathLike[str]) -> list[Scene]:
    """The scenes `save_split` wrote to `folder`, in file order.

    Raises:
        FileNotFoundError: if `folder` has no ``labels.jsonl``.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> _ = save_split(world_split("train", 3), folder)
        >>> [s.caption for s in load_folder(folder)] == [s.caption for s in world_split("train", 3)]
        True
    """
    folder = Path(folder)
    path = folder / "labels.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no labels.jsonl; it is not a folder written by save_split"
        )
    scenes = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        with Image.open(folder / record["file"]) as opened:
            image = opened.convert("RGB")
        scenes.append(Scene.from_record(record, image))
    return scenes


def scenes_to_examples(
    scenes: Sequence[Scene], kind: Kind | None = None, template: str | None = None
) -> list[Example]:
    """`vlm_lens.data.examples.Example` objects of scenes, for `vlm_lens.data.runner`.

    Args:
        scenes: the scenes.
        kind: ``None``: the text is the caption and the label ``scene.label``; a kind: the text
            is the scene's question of that kind and the label its answer.
        template: optional `str.format` template of the text with fields ``{text}``,
            ``{caption}`` and ``{question}``; write the model's image placeholder into it
            (e.g. ``"<image> {text}"``) to use the texts as prompts as they are.

    Example:
        >>> ex = scenes_to_examples(world_split("val", 1), kind="count", template="<image>{text}")
        >>> ex[0].text, ex[0].label, ex[0].id
        ('<image>how many shapes are there?', 'two', 'val-0')
    """
    from vlm_lens.data.examples import Example

    examples = []
    for scene in scenes:
        qa = None if kind is None else scene.question(kind)
        text = scene.caption if qa is None else qa.question
        if template is not None:
            question = "" if qa is None else qa.question
            text = template.format(text=text, caption=scene.caption, question=question)
        metadata = {
            "split": scene.split,
            "index": scene.index,
            "caption": scene.caption,
            "n_objects": len(scene.objects),
            "object_label": scene.label,
        }
        if qa is not None:
            metadata.update(kind=qa.kind, question=qa.question, answer=qa.answer)
        examples.append(
            Example(
                images=scene.image,
                text=text,
                label=scene.label if qa is None else qa.answer,
                id=f"{scene.split}-{scene.index}",
                metadata=metadata,
            )
        )
    return examples


# --------------------------------------------------------------------------------------------
# Internals


def _check_image_size(image_size: int) -> None:
    if not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")


def _check_names(obj: WorldObject) -> None:
    for value, allowed, what in (
        (obj.shape, SHAPES, "shape"),
        (obj.colour, tuple(COLOURS), "colour"),
        (obj.size, SIZES, "size"),
        (obj.position, POSITIONS, "position"),
    ):
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; the world's {what}s are {allowed}")


def _check_objects(objects: Sequence[WorldObject]) -> None:
    if not 1 <= len(objects) <= MAX_OBJECTS:
        raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(objects)}")
    for obj in objects:
        _check_names(obj)
    if len({o.position for o in objects}) != len(objects):
        raise ValueError("two objects share a position; the world has one object per cell")
    if len({(o.colour, o.shape) for o in objects}) != len(objects):
        raise ValueError("two objects share a colour and a shape; the world keeps them distinct")


def _cell_range(position: str, image_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((x_lo, x_hi), (y_lo, y_hi))`` (hi exclusive): where an object at `position` may lie,
    its grid cell less a 1 px gutter along the edges it shares with other cells."""
    index = POSITIONS.index(position)
    half = image_size // 2
    bounds = ((0, half - 1), (half + 1, image_size))
    return bounds[index % 2], bounds[index // 2]


def _ordered(objects: Sequence[WorldObject]) -> tuple[WorldObject, ...]:
    return tuple(sorted(objects, key=lambda o: POSITIONS.index(o.position)))


def _objects_of(scene_or_objects: Scene | Sequence[WorldObject]) -> Sequence[WorldObject]:
    if isinstance(scene_or_objects, Scene):
        return scene_or_objects.objects
    return scene_or_objects


def _draw_objects(rng: np.random.Generator, n: int, image_size: int) -> tuple[WorldObject, ...]:
    cells = sorted(int(c) for c in rng.permutation(MAX_OBJECTS)[:n])
    pairs = rng.permutation(len(COLOURS) * len(SHAPES))[:n]  # distinct (colour, shape) pairs
    colours = tuple(COLOURS)
    objects = []
    for cell, pair in zip(cells, pairs, strict=True):
        size = SIZES[int(rng.integers(len(SIZES)))]
        side = object_side(size, image_size)
        (x_lo, x_hi), (y_lo, y_hi) = _cell_range(POSITIONS[cell], image_size)
        x = int(rng.integers(x_lo, x_hi - side + 1))
        y = int(rng.integers(y_lo, y_hi - side + 1))
        colour, shape = colours[int(pair) // len(SHAPES)], SHAPES[int(pair) % len(SHAPES)]
        objects.append(WorldObject(shape, colour, size, POSITIONS[cell], x, y))
    return tuple(objects)


def _build_scene(
    objects: tuple[WorldObject, ...],
    background_seed: int,
    image_size: int,
    index: int,
    seed: int,
    rng: np.random.Generator,
) -> Scene:
    """Render `objects` and write their text; `rng` picks which object each question is about."""
    n = len(objects)
    targets = [None if n == 1 else int(rng.integers(n)) for _ in KINDS]
    qa = tuple(ask(kind, objects, target) for kind, target in zip(KINDS, targets, strict=True))
    return Scene(
        image=render_scene(objects, background_seed, image_size),
        objects=objects,
        caption=caption(objects),
        qa=qa,
        label=objects[0].name,
        index=index,
        split=split_of(objects, image_size),
        background_seed=background_seed,
        image_size=image_size,
        seed=seed,
    )


# The relational task (re-exported: ``from vlm_lens.world import relational_qa``). Imported last:
# it builds on the names above.
from vlm_lens.world.relational import *  # noqa: E402, F403  (its __all__)

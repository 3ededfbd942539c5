"""Relational questions: questions about scenes of 2-4 objects that need several objects at once.

The local task asks about one attribute of one object (`vlm_lens.world.ask`). The relational task
asks questions whose answer depends on several objects (`RELATIONAL_KINDS`):

- counting by attribute: ``"how many red shapes are there?"``, ``"how many circles are
  there?"``, ``"how many large shapes are there?"`` (answers ``"zero"`` to ``"four"``);
- comparison of two objects: ``"are the circle and the square the same colour?"``, ``"are the
  red shape and the blue shape the same shape?"``, ``"are the red circle and the square the same
  size?"`` (``"yes"`` / ``"no"``); an object is named by what the question does not compare;
- spatial relation by grid cell: ``"is the red shape left of the circle?"`` (asked only of two
  objects in different columns), ``"is the circle above the blue shape?"`` (different rows);
- existence: ``"is there a red circle?"`` (a "no" names a pair that shares its colour or its
  shape with an object of the scene whenever one exists).

Every object a question names is unique in its scene: ``"the red shape"`` only when one object is
red, ``"the circle"`` only when one object is a circle, ``"the red circle"`` always (colour-shape
pairs are distinct in a scene).

**Balance.** Each kind's question is chosen in two steps with a seeded rng: first an answer,
among the answers some question of that kind would have in this scene (yes/no: each with
probability 1/2; counts: weighted towards the rarely achievable counts, `COUNT_WEIGHTS`), then a
question with that answer, uniformly. A comparison kind whose every question has the same answer
in a scene is not asked of that scene (so its yes/no rate is 1/2 in expectation); every other
kind is asked of every scene.

Example:
    >>> scene = task_split("relational", "train", 1)[0]
    >>> len(scene.objects) >= 2, all(qa.answer in answers_of(qa.kind) for qa in scene.qa)
    (True, True)
    >>> objs = [WorldObject("circle", "red", "large", "top left"),
    ...         WorldObject("square", "red", "small", "bottom right")]
    >>> [qa.answer for qa in relational_candidates("left_of", objs)]
    ['yes', 'yes', 'yes', 'yes', 'no', 'no', 'no', 'no']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal, get_args

import numpy as np

from vlm_lens.world import (
    ANSWERS,
    COLOURS,
    NUMBERS,
    POSITIONS,
    QA,
    SHAPES,
    SIZES,
    SPLITS,
    Scene,
    WorldObject,
    tokenize,
    world_split,
)

__all__ = [
    "COUNTS",
    "COUNT_WEIGHTS",
    "PLURALS",
    "RELATIONAL_ANSWERS",
    "RELATIONAL_KINDS",
    "RELATIONAL_QUESTIONS",
    "TASKS",
    "YES_NO",
    "RelationalKind",
    "answers_of",
    "names_of",
    "relational_candidates",
    "relational_qa",
    "relational_words",
    "task_split",
]

RelationalKind = Literal[
    "count_colour",
    "count_shape",
    "count_size",
    "same_colour",
    "same_shape",
    "same_size",
    "left_of",
    "above",
    "exists",
]
"""The kind of a relational question."""

RELATIONAL_KINDS: tuple[str, ...] = get_args(RelationalKind)
"""Every relational question kind, in the order of a relational scene's ``qa``."""

TASKS: tuple[str, ...] = ("local", "relational")
"""Task names of `task_split`."""

COUNTS: tuple[str, ...] = ("zero", *NUMBERS)
"""Answers of the counting kinds: ``COUNTS[n]`` is the answer for ``n`` objects."""

YES_NO: tuple[str, ...] = ("yes", "no")
"""Answers of the yes/no kinds."""

PLURALS: dict[str, str] = {
    shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES
}
"""Shape -> its plural in the counting question (``"cross"`` -> ``"crosses"``)."""

RELATIONAL_QUESTIONS: dict[str, str] = {
    "count_colour": "how many {colour} shapes are there?",
    "count_shape": "how many {shapes} are there?",
    "count_size": "how many {size} shapes are there?",
    "same_colour": "are the {a} and the {b} the same colour?",
    "same_shape": "are the {a} and the {b} the same shape?",
    "same_size": "are the {a} and the {b} the same size?",
    "left_of": "is the {a} left of the {b}?",
    "above": "is the {a} above the {b}?",
    "exists": "is there a {colour} {shape}?",
}
"""The template of each relational kind (``{a}``, ``{b}``: names of objects, see `names_of`)."""

RELATIONAL_ANSWERS: dict[str, tuple[str, ...]] = {
    kind: COUNTS if kind.startswith("count_") else YES_NO for kind in RELATIONAL_KINDS
}
"""Relational kind -> its closed answer set."""

COUNT_WEIGHTS: dict[str, dict[str, float]] = {
    "count_colour": {"zero": 1.0, "one": 1.16, "two": 6.8, "three": 1075.0, "four": 4e6},
    "count_shape": {"zero": 1.0, "one": 1.15, "two": 6.6, "three": 1666.0, "four": 1e6},
    "count_size": {"zero": 12.0, "one": 2.8, "two": 3.4, "three": 16.0, "four": 434.0},
}
"""Counting kind -> weight of each answer when choosing among a scene's achievable counts:
``1 / rate**2``, where ``rate`` is the fraction of relational train scenes (2000, seed 0) in which
some question of that kind has that answer, so that rarely achievable counts are chosen when they
can be (the largest answer share falls from 0.44 under uniform choice to about 0.36)."""

MIN_OBJECTS = 2
"""Fewest objects in a relational scene."""

_COMPARED = {"same_colour": "colour", "same_shape": "shape", "same_size": "size"}
_QA_STREAM = 7919  # keeps the question rng apart from the scene generator's rng


def answers_of(kind: str) -> tuple[str, ...]:
    """The closed answer set of a question kind of either task.

    Raises:
        ValueError: if `kind` is neither a local kind (`vlm_lens.world.KINDS`) nor a relational
            one (`RELATIONAL_KINDS`).

    Example:
        >>> answers_of("same_colour"), answers_of("size")
        (('yes', 'no'), ('small', 'large'))
    """
    if kind in ANSWERS:
        return ANSWERS[kind]
    if kind in RELATIONAL_ANSWERS:
        return RELATIONAL_ANSWERS[kind]
    raise ValueError(
        f"unknown question kind {kind!r}; local kinds are {tuple(ANSWERS)}, "
        f"relational kinds are {RELATIONAL_KINDS}"
    )


def names_of(obj: WorldObject, objects: Sequence[WorldObject], without: str = "") -> list[str]:
    """Every name that picks out `obj` alone among `objects` (``"red shape"``, ``"circle"``,
    ``"red circle"``), leaving out names that mention the attribute `without`.

    Example:
        >>> objs = [WorldObject("circle", "red", "large", "top left"),
        ...         WorldObject("square", "red", "small", "top right")]
        >>> names_of(objs[0], objs), names_of(objs[0], objs, without="shape")
        (['circle', 'red circle'], [])
    """
    names = []
    if without != "colour" and sum(o.colour == obj.colour for o in objects) == 1:
        names.append(f"{obj.colour} shape")
    if without != "shape" and sum(o.shape == obj.shape for o in objects) == 1:
        names.append(obj.shape)
    if without not in ("colour", "shape"):
        names.append(f"{obj.colour} {obj.shape}")
    return names


def relational_candidates(kind: str, objects: Sequence[WorldObject]) -> list[QA]:
    """Every question of relational `kind` the scene of `objects` can ask, with its answer, in a
    fixed order.

    Raises:
        ValueError: for an unknown kind.

    Example:
        >>> objs = [WorldObject("circle", "red", "large", "top left"),
        ...         WorldObject("square", "blue", "large", "top right")]
        >>> [(qa.question, qa.answer) for qa in relational_candidates("count_size", objs)]
        [('how many small shapes are there?', 'zero'), ('how many large shapes are there?', 'two')]
    """
    if kind not in RELATIONAL_KINDS:
        raise ValueError(f"unknown relational kind {kind!r}; kinds are {RELATIONAL_KINDS}")
    template = RELATIONAL_QUESTIONS[kind]
    out: list[tuple[str, str]] = []
    if kind == "count_colour":
        for colour in COLOURS:
            n = sum(o.colour == colour for o in objects)
            out.append((template.format(colour=colour), COUNTS[n]))
    elif kind == "count_shape":
        for shape in SHAPES:
            n = sum(o.shape == shape for o in objects)
            out.append((template.format(shapes=PLURALS[shape]), COUNTS[n]))
    elif kind == "count_size":
        for size in SIZES:
            n = sum(o.size == size for o in objects)
            out.append((template.format(size=size), COUNTS[n]))
    elif kind == "exists":
        present = {(o.colour, o.shape) for o in objects}
        colours = {o.colour for o in objects}
        shapes = {o.shape for o in objects}
        near = [
            (c, s)
            for c in COLOURS
            for s in SHAPES
            if (c, s) not in present and (c in colours or s in shapes)
        ]
        far = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        absent = near or far
        for colour, shape in sorted(present, key=lambda p: (list(COLOURS).index(p[0]), p[1])):
            out.append((template.format(colour=colour, shape=shape), "yes"))
        for colour, shape in absent:
            out.append((template.format(colour=colour, shape=shape), "no"))
    else:
        without = _COMPARED.get(kind, "")
        for i, first in enumerate(objects):
            for j, second in enumerate(objects):
                if i == j or (kind in _COMPARED and j < i):
                    continue
                answer = _pair_answer(kind, first, second)
                if answer is None:
                    continue
                for a in names_of(first, objects, without):
                    for b in names_of(second, objects, without):
                        out.append((template.format(a=a, b=b), answer))
    return [QA(question, answer, kind) for question, answer in out]


def relational_qa(scene: Scene, rng: np.random.Generator | None = None) -> tuple[QA, ...]:
    """The relational questions of `scene`: at most one per kind, in the order of
    `RELATIONAL_KINDS` (see the module docstring for how each is chosen).

    Args:
        scene: a scene of 2 to 4 objects.
        rng: the generator of the choices; default: one seeded by the scene's world seed, split
            and index (so a scene always gets the same questions).

    Raises:
        ValueError: if the scene has fewer than 2 objects.

    Example:
        >>> from vlm_lens.world import generate_scene
        >>> scene = generate_scene(0, "train", min_objects=2, max_objects=4)
        >>> relational_qa(scene) == relational_qa(scene)
        True
    """
    objects = scene.objects
    if len(objects) < MIN_OBJECTS:
        raise ValueError(
            f"relational questions need a scene of {MIN_OBJECTS} to 4 objects, got "
            f"{len(objects)}; generate it with min_objects={MIN_OBJECTS}"
        )
    if rng is None:
        rng = np.random.default_rng(
            [scene.seed, SPLITS.index(scene.split), scene.index, _QA_STREAM]
        )
    out = []
    for kind in RELATIONAL_KINDS:
        by_answer: dict[str, list[QA]] = {}
        for qa in relational_candidates(kind, objects):
            by_answer.setdefault(qa.answer, []).append(qa)
        if not by_answer or (kind in _COMPARED and len(by_answer) < 2):
            continue
        answers = sorted(by_answer, key=RELATIONAL_ANSWERS[kind].index)
        weights = np.array([COUNT_WEIGHTS.get(kind, {}).get(a, 1.0) for a in answers])
        answer = answers[int(rng.choice(len(answers), p=weights / weights.sum()))]
        group = by_answer[answer]
        out.append(group[int(rng.integers(len(group)))])
    return tuple(out)


def task_split(task: str, split: str, n: int, seed: int = 0, image_size: int = 32) -> list[Scene]:
    """Scenes ``0 .. n - 1`` of `split` for `task`.

    ``"local"``: ``world_split(split, n, seed, image_size=image_size, max_objects=1)``.
    ``"relational"``: scenes of 2 to 4 objects (``world_split(..., min_objects=2,
    max_objects=4)``, so splits stay disjoint by layout) whose ``qa`` is `relational_qa`.

    Raises:
        ValueError: for an unknown task (or a bad split, size, ...).

    Example:
        >>> [len(s.objects) for s in task_split("local", "val", 3)]
        [1, 1, 1]
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
    if task == "local":
        return world_split(split, n, seed, image_size=image_size, max_objects=1)
    scenes = world_split(
        split, n, seed, image_size=image_size, min_objects=MIN_OBJECTS, max_objects=len(POSITIONS)
    )
    return [replace(scene, qa=relational_qa(scene)) for scene in scenes]


def relational_words() -> set[str]:
    """Every word the relational questions and answers use (templates, fillers, answers).

    Example:
        >>> {"zero", "crosses", "left", "above", "yes"} <= relational_words()
        True
    """
    words: set[str] = set()
    for template in RELATIONAL_QUESTIONS.values():
        words.update(tokenize(re.sub(r"\{\w+\}", " ", template)))
    fillers = [*COLOURS, *SHAPES, *PLURALS.values(), *SIZES, *COUNTS, *YES_NO, "shape"]
    for word in fillers:
        words.update(tokenize(word))
    return words


def _pair_answer(kind: str, first: WorldObject, second: WorldObject) -> str | None:
    if kind in _COMPARED:
        attr = _COMPARED[kind]
        return "yes" if getattr(first, attr) == getattr(second, attr) else "no"
    a, b = POSITIONS.index(first.position), POSITIONS.index(second.position)
    if kind == "left_of":
        return None if a % 2 == b % 2 else ("yes" if a % 2 < b % 2 else "no")
    return None if a // 2 == b // 2 else ("yes" if a // 2 < b // 2 else "no")

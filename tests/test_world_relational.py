"""vlm_lens.world relational task: answers recomputed by an independent parser, unique referents,
balance, determinism, disjoint splits, a closed vocabulary and clear errors.

The parser below reads each question with its own regular expressions, resolves every name it
contains against ``scene.objects`` (a name must match exactly one object) and recomputes the
answer from the objects' attributes and grid cells; it shares no code with
`vlm_lens.world.relational`.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from vlm_lens import world
from vlm_lens.world import (
    ANSWERS,
    COLOURS,
    KINDS,
    QA,
    RELATIONAL_KINDS,
    SHAPES,
    SIZES,
    TASKS,
    Scene,
    WorldObject,
    answers_of,
    relational_qa,
    task_split,
    tokenize,
    vocabulary,
    world_split,
)

N_BALANCE = 2000
NUMBER_WORDS = ["zero", "one", "two", "three", "four"]


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return task_split("relational", "train", N_BALANCE)


@pytest.fixture(scope="module")
def test_scenes() -> list[Scene]:
    return task_split("relational", "test", 300)


# --------------------------------------------------------------------------------------------
# The independent parser


def _plural_to_shape(word: str) -> str:
    matches = [s for s in SHAPES if word in (s + "s", s + "es")]
    assert len(matches) == 1, word
    return matches[0]


def _resolve(name: str, objects: tuple[WorldObject, ...]) -> WorldObject:
    """The one object `name` ("red shape", "circle", "red circle") picks out."""
    words = name.split()
    if len(words) == 2 and words[1] == "shape":
        matches = [o for o in objects if o.colour == words[0]]
    elif len(words) == 1:
        matches = [o for o in objects if o.shape == words[0]]
    else:
        assert len(words) == 2, name
        matches = [o for o in objects if (o.colour, o.shape) == (words[0], words[1])]
    assert len(matches) == 1, f"{name!r} names {len(matches)} objects of {objects}"
    return matches[0]


def _column(obj: WorldObject) -> int:
    return int(obj.position.endswith("right"))


def _row(obj: WorldObject) -> int:
    return int(obj.position.startswith("bottom"))


def _yes(condition: bool) -> str:
    return "yes" if condition else "no"


def brute_answer(question: str, objects: tuple[WorldObject, ...]) -> tuple[str, str]:
    """``(kind, answer)`` of a relational question, from the objects alone."""
    if m := re.fullmatch(r"how many (\w+) shapes are there\?", question):
        word = m[1]
        if word in COLOURS:
            return "count_colour", NUMBER_WORDS[sum(o.colour == word for o in objects)]
        assert word in SIZES, question
        return "count_size", NUMBER_WORDS[sum(o.size == word for o in objects)]
    if m := re.fullmatch(r"how many (\w+) are there\?", question):
        shape = _plural_to_shape(m[1])
        return "count_shape", NUMBER_WORDS[sum(o.shape == shape for o in objects)]
    if m := re.fullmatch(r"are the (.+) and the (.+) the same (colour|shape|size)\?", question):
        a, b = _resolve(m[1], objects), _resolve(m[2], objects)
        assert a is not b, question
        attribute = m[3]
        # the names must not give the compared attribute away
        for name in (m[1], m[2]):
            named = set(name.split())
            assert not named & ({*COLOURS} if attribute == "colour" else set()), question
            assert not named & ({*SHAPES} if attribute == "shape" else set()), question
        return f"same_{attribute}", _yes(getattr(a, attribute) == getattr(b, attribute))
    if m := re.fullmatch(r"is the (.+) (left of|above) the (.+)\?", question):
        a, b = _resolve(m[1], objects), _resolve(m[3], objects)
        if m[2] == "left of":
            assert _column(a) != _column(b), f"{question}: same column, answer undefined"
            return "left_of", _yes(_column(a) < _column(b))
        assert _row(a) != _row(b), f"{question}: same row, answer undefined"
        return "above", _yes(_row(a) < _row(b))
    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        return "exists", _yes(any((o.colour, o.shape) == (m[1], m[2]) for o in objects))
    raise AssertionError(f"unparsed question {question!r}")


# --------------------------------------------------------------------------------------------
# Answers, referents, balance


def test_every_answer_matches_brute_force(scenes: list[Scene], test_scenes: list[Scene]) -> None:
    asked = 0
    for scene in scenes + test_scenes:
        assert 2 <= len(scene.objects) <= 4
        kinds = [qa.kind for qa in scene.qa]
        assert kinds == [k for k in RELATIONAL_KINDS if k in kinds]  # one each, in order
        for qa in scene.qa:
            assert brute_answer(qa.question, scene.objects) == (qa.kind, qa.answer), qa
            assert qa.answer in answers_of(qa.kind)
            asked += 1
    assert asked > 7 * len(scenes)


def test_every_kind_is_asked_and_answer_sets_are_closed(scenes: list[Scene]) -> None:
    seen: dict[str, set[str]] = {k: set() for k in RELATIONAL_KINDS}
    for scene in scenes:
        for qa in scene.qa:
            seen[qa.kind].add(qa.answer)
    for kind in RELATIONAL_KINDS:
        assert seen[kind] <= set(answers_of(kind))
        if kind.startswith("count_"):
            assert {"zero", "one", "two", "three"} <= seen[kind], kind
        else:
            assert seen[kind] == {"yes", "no"}, kind
    assert answers_of("count_colour") == tuple(NUMBER_WORDS)
    for kind in KINDS:
        assert answers_of(kind) == ANSWERS[kind]


def test_answers_are_balanced(scenes: list[Scene]) -> None:
    counts: dict[str, Counter[str]] = {k: Counter() for k in RELATIONAL_KINDS}
    for scene in scenes:
        for qa in scene.qa:
            counts[qa.kind][qa.answer] += 1
    for kind, counter in counts.items():
        total = sum(counter.values())
        assert total >= 0.15 * len(scenes), (kind, total)
        top = counter.most_common(1)[0][1] / total
        if kind.startswith("count_"):
            assert top < 0.4, (kind, counter)
        else:
            assert abs(counter["yes"] / total - 0.5) < 0.06, (kind, counter)


def test_spatial_questions_are_asked_whenever_defined(scenes: list[Scene]) -> None:
    for scene in scenes[:500]:
        kinds = {qa.kind for qa in scene.qa}
        columns = {_column(o) for o in scene.objects}
        rows = {_row(o) for o in scene.objects}
        assert ("left_of" in kinds) == (len(columns) == 2)
        assert ("above" in kinds) == (len(rows) == 2)
        for kind in ("count_colour", "count_shape", "count_size", "exists"):
            assert kind in kinds


def test_comparisons_are_asked_only_when_both_answers_occur() -> None:
    # two objects of one colour: "same colour" would always be "yes" -> not asked
    one_colour = (
        WorldObject("circle", "red", "large", "top left"),
        WorldObject("square", "red", "small", "top right"),
    )
    scene = world.make_scene(one_colour)
    assert "same_colour" not in {qa.kind for qa in relational_qa(scene)}
    mixed = (*one_colour, WorldObject("ring", "blue", "small", "bottom left"))
    answers = set()
    for seed in range(40):
        for qa in relational_qa(world.make_scene(mixed), np.random.default_rng(seed)):
            if qa.kind == "same_colour":
                answers.add(qa.answer)
    assert answers == {"yes", "no"}


# --------------------------------------------------------------------------------------------
# Determinism, splits, local task


def test_deterministic_and_seeded() -> None:
    a = task_split("relational", "val", 30, seed=3)
    b = task_split("relational", "val", 30, seed=3)
    assert a == b
    assert all(x.image.tobytes() == y.image.tobytes() for x, y in zip(a, b, strict=True))
    c = task_split("relational", "val", 30, seed=4)
    assert [s.qa for s in a] != [s.qa for s in c]
    scene = a[0]
    assert relational_qa(scene) == scene.qa  # the default rng is the scene's own
    assert task_split("relational", "val", 5, seed=3) == a[:5]


def test_splits_are_disjoint(scenes: list[Scene], test_scenes: list[Scene]) -> None:
    val = task_split("relational", "val", 300)
    keys = {
        name: {s.layout_key for s in group}
        for name, group in (("train", scenes), ("val", val), ("test", test_scenes))
    }
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]
    for name, group in (("train", scenes), ("val", val), ("test", test_scenes)):
        assert {s.split for s in group} == {name}
        assert all(world.split_of(s.objects, s.image_size) == name for s in group)


def test_local_task_is_the_one_object_world() -> None:
    assert TASKS == ("local", "relational")
    local = task_split("local", "test", 20, seed=1, image_size=24)
    assert local == world_split("test", 20, 1, image_size=24, max_objects=1)
    relational = task_split("relational", "test", 20, seed=1, image_size=24)
    assert {s.image.size for s in relational} == {(24, 24)}
    # the relational scenes are the world's 2-4 object scenes with new questions
    plain = world_split("test", 20, 1, image_size=24, min_objects=2, max_objects=4)
    assert [s.objects for s in relational] == [s.objects for s in plain]
    assert [s.caption for s in relational] == [s.caption for s in plain]


# --------------------------------------------------------------------------------------------
# Text


def test_vocabulary_covers_both_tasks(scenes: list[Scene]) -> None:
    vocab = set(vocabulary(*TASKS))
    assert vocabulary(*TASKS) == vocabulary("relational", "local")
    used: set[str] = set()
    for scene in scenes[:500] + task_split("local", "train", 200):
        texts = [scene.caption, scene.label]
        texts += [t for qa in scene.qa for t in (qa.question, qa.answer)]
        for text in texts:
            words = tokenize(text)
            assert "".join(words) == text.replace(" ", "")
            assert set(words) <= vocab, text
            used.update(words)
    for kind in (*KINDS, *RELATIONAL_KINDS):
        for answer in answers_of(kind):
            assert set(tokenize(answer)) <= vocab
    # every word is said somewhere ("four": a 4-object caption or count; plurals: all shapes)
    assert vocab - used <= {"four", "three"} | {s + "s" for s in SHAPES} | {"crosses"}
    # the default stays the local vocabulary the shipped organisms were trained with
    assert set(vocabulary()) < vocab
    assert set(vocabulary("local")) == set(vocabulary())


def test_multi_object_captions_read_well(scenes: list[Scene]) -> None:
    for scene in scenes[:200]:
        n = len(scene.objects)
        phrases = [f"a {o.size} {o.colour} {o.shape} at the {o.position}" for o in scene.objects]
        listed = ", ".join(phrases[:-1]) + " and " + phrases[-1]
        assert scene.caption == f"{NUMBER_WORDS[n]} shapes: {listed}."


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.bad_input_types
def test_errors_name_the_problem() -> None:
    with pytest.raises(
        ValueError, match=r"unknown task 'global'; tasks are \('local', 'relational'\)"
    ):
        task_split("global", "train", 1)
    with pytest.raises(ValueError, match="unknown task 'global'"):
        vocabulary("global")
    with pytest.raises(ValueError, match="unknown question kind 'bogus'.*relational kinds"):
        answers_of("bogus")
    with pytest.raises(ValueError, match="unknown split"):
        task_split("relational", "dev", 1)
    one = world.make_scene([WorldObject("circle", "red", "large", "top left")])
    with pytest.raises(ValueError, match="need a scene of 2 to 4 objects.*min_objects=2"):
        relational_qa(one)
    with pytest.raises(ValueError, match="unknown relational kind"):
        world.relational_candidates("colour", one.objects)


def test_qa_records_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    scenes = task_split("relational", "val", 3)
    world.save_split(scenes, tmp_path)
    loaded = world.load_folder(tmp_path)
    assert [s.qa for s in loaded] == [s.qa for s in scenes]
    assert all(isinstance(qa, QA) for s in loaded for qa in s.qa)

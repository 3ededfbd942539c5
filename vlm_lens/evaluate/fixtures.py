"""Tiny datasets in the real on-disk formats, written from the synthetic world (`vlm_lens.world`).

- `write_vqav2`: the official VQAv2 questions and annotations JSON and a ``val2014/`` folder of
  ``COCO_val2014_%012d.jpg`` images; every scene asks its five questions (`vlm_lens.world.QA`),
  each with ten annotator answers that sometimes disagree;
- `write_karpathy`: a Karpathy-split ``dataset_coco.json`` (images in ``val2014/`` and
  ``train2014/``) or ``dataset_flickr30k.json`` (images in ``flickr30k-images/``), five captions
  per image (variants of the scene's caption), train, val and test images interleaved;
- `write_class_folders`: one folder per class (one-object scenes, label "colour shape");
- `to_hf_dataset`: a ``datasets.Dataset`` of items, as ``HuggingFaceM4/VQAv2`` or
  ``nlphuji/flickr30k`` lay theirs out.

Everything is a function of the arguments (scenes by `vlm_lens.world.generate_scene`, the
answer and caption variants by ``numpy.random.default_rng([seed, ...])``).

Answers are stored as the official annotation files store them, already normalised: count
answers are digits (``"2"``, not ``"two"``), since the official evaluation normalises the
prediction but not the annotators' answers (`vlm_lens.evaluate.vqa`).

Example:
    >>> import json, tempfile
    >>> folder = write_vqav2(tempfile.mkdtemp(), n_images=1)
    >>> sorted(p.name for p in folder.iterdir())
    ['v2_OpenEnded_mscoco_val2014_questions.json', 'v2_mscoco_val2014_annotations.json', 'val2014']
    >>> ann = json.loads((folder / "v2_mscoco_val2014_annotations.json").read_text())
    >>> len(ann["annotations"]), len(ann["annotations"][0]["answers"])
    (5, 10)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from vlm_lens.errors import VLMInputError
from vlm_lens.evaluate.items import EvalItem, load_item_image
from vlm_lens.world import (
    ANSWERS,
    COLOURS,
    NUMBERS,
    POSITIONS,
    QA,
    SHAPES,
    SIZES,
    Scene,
    WorldObject,
    make_scene,
    world_split,
)

__all__ = [
    "DEFAULT_CLASSES",
    "caption_variants",
    "to_hf_dataset",
    "vqa_answer",
    "write_class_folders",
    "write_karpathy",
    "write_vqav2",
]

DEFAULT_CLASSES: tuple[str, ...] = ("red circle", "blue square", "green triangle", "yellow cross")
"""The classes `write_class_folders` writes by default."""

ImageFormat = Literal["jpg", "png"]


def vqa_answer(answer: str) -> str:
    """A world answer as VQAv2 annotations store it: count words as digits.

    Example:
        >>> vqa_answer("three"), vqa_answer("top left")
        ('3', 'top left')
    """
    return str(NUMBERS.index(answer) + 1) if answer in NUMBERS else answer


def _save(image: Image.Image, path: Path, image_format: ImageFormat) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image_format == "jpg":
        # Best quality without chroma subsampling: the flat palette colours survive closely.
        image.save(path, format="JPEG", quality=100, subsampling=0)
    else:
        image.save(path, format="PNG")


def _check_format(image_format: str) -> None:
    if image_format not in ("jpg", "png"):
        raise VLMInputError(f"image_format must be 'jpg' or 'png'; got {image_format!r}")


def _annotator_answers(qa: QA, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Ten ``(answer, confidence)`` pairs: 0, 1, 2, 3 or 4 annotators (drawn; none with
    probability 1/3) give another answer of the same kind, the rest the true answer, which so
    stays the majority."""
    true = vqa_answer(qa.answer)
    others = [vqa_answer(a) for a in ANSWERS[qa.kind] if a != qa.answer]
    dissent = int(rng.choice([0, 0, 1, 2, 3, 4]))
    who = set(rng.permutation(10)[:dissent].tolist())
    return [
        (others[int(rng.integers(len(others)))], "maybe") if i in who else (true, "yes")
        for i in range(10)
    ]


def write_vqav2(
    folder: str | os.PathLike[str],
    n_images: int = 20,
    *,
    seed: int = 0,
    split: str = "val",
    image_size: int = 32,
    max_objects: int = 3,
    image_format: ImageFormat = "jpg",
    plain_names: bool = False,
) -> Path:
    """Write a VQAv2-format folder of world scenes.

    Layout: ``v2_OpenEnded_mscoco_val2014_questions.json``, ``v2_mscoco_val2014_annotations.json``
    and ``val2014/COCO_val2014_%012d.jpg`` (``%012d.jpg`` with `plain_names`; ``.png`` with
    ``image_format="png"``). Scene ``i`` of `split` is image id ``i + 1``; its questions (one
    per kind, `vlm_lens.world.KINDS` order) have ids ``image_id * 1000 + k``.

    Args:
        folder: where to write (created).
        n_images: scenes (five questions each).
        seed: world seed, also the seed of the annotators' answers.
        split: the world split the scenes come from.
        image_size: image side in pixels.
        max_objects: most objects per scene.
        image_format: ``"jpg"`` (quality 100, no chroma subsampling) or ``"png"`` (lossless).
        plain_names: name images ``%012d`` instead of ``COCO_val2014_%012d``.

    Returns:
        The folder.
    """
    _check_format(image_format)
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    questions: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for scene in world_split(split, n_images, seed, image_size=image_size, max_objects=max_objects):
        image_id = scene.index + 1
        stem = f"{image_id:012d}" if plain_names else f"COCO_val2014_{image_id:012d}"
        _save(scene.image, root / "val2014" / f"{stem}.{image_format}", image_format)
        for k, qa in enumerate(scene.qa):
            qid = image_id * 1000 + k
            questions.append({"image_id": image_id, "question": qa.question, "question_id": qid})
            rng = np.random.default_rng([seed, image_id, k])
            given = _annotator_answers(qa, rng)
            annotations.append(
                {
                    "question_type": " ".join(qa.question.split()[:2]),
                    "multiple_choice_answer": Counter(a for a, _ in given).most_common(1)[0][0],
                    "answers": [
                        {"answer": a, "answer_confidence": c, "answer_id": i + 1}
                        for i, (a, c) in enumerate(given)
                    ],
                    "image_id": image_id,
                    "answer_type": "number" if qa.kind == "count" else "other",
                    "question_id": qid,
                }
            )
    header = {"info": {"description": "vlm_lens world fixture"}, "license": {}}
    subtype = {"data_type": "mscoco", "data_subtype": "val2014"}
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(
        json.dumps({**header, "task_type": "Open-Ended", **subtype, "questions": questions})
    )
    (root / "v2_mscoco_val2014_annotations.json").write_text(
        json.dumps({**header, **subtype, "annotations": annotations})
    )
    return root


def caption_variants(caption: str, rng: np.random.Generator, n: int = 5) -> list[str]:
    """`n` reference captions: the world caption itself, then ``n - 1`` distinct rewordings
    drawn with `rng` (capitalised, "in the" for "at the", sizes dropped, a lead-in...).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> variants = caption_variants("a large red circle at the top left.", rng)
        >>> variants[0], len(set(variants))
        ('a large red circle at the top left.', 5)
    """
    body = caption.rstrip(".")
    unsized = body.replace("large ", "").replace("small ", "")
    candidates = [
        body[:1].upper() + body[1:],
        body.replace(" at the ", " in the ") + ".",
        f"there is {body}.",
        f"an image of {unsized}.",
        unsized + ".",
        body.replace(" at the ", " on the ") + " of the picture.",
        f"A picture showing {body}",
    ]
    candidates = list(dict.fromkeys(c for c in candidates if c != caption))
    if n - 1 > len(candidates):
        raise VLMInputError(f"at most {len(candidates) + 1} caption variants; asked for {n}")
    picked = rng.permutation(len(candidates))[: n - 1]
    return [caption] + [candidates[int(i)] for i in picked]


def write_karpathy(
    folder: str | os.PathLike[str],
    dataset: Literal["coco", "flickr30k"] = "coco",
    *,
    n_test: int = 10,
    n_train: int = 4,
    n_val: int = 2,
    seed: int = 0,
    image_size: int = 32,
    max_objects: int = 3,
    image_format: ImageFormat = "jpg",
) -> Path:
    """Write a Karpathy-split caption folder of world scenes.

    COCO: ``dataset_coco.json`` with ``filepath`` (``val2014`` for val and test images,
    ``train2014`` for train), ``filename`` ``COCO_{filepath}_%012d.jpg``, ``cocoid``; the images
    in ``{filepath}/``. Flickr30k: ``dataset_flickr30k.json`` with ``filename`` ``%d.jpg`` only;
    the images in ``flickr30k-images/``. Test images are world test scenes, train ones train
    scenes, val ones val scenes; the records interleave the splits (train, test, val, train,
    ...) so a reader must filter by ``split``.

    Returns:
        The folder.
    """
    _check_format(image_format)
    if dataset not in ("coco", "flickr30k"):
        raise VLMInputError(f"dataset must be 'coco' or 'flickr30k'; got {dataset!r}")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    opts = {"image_size": image_size, "max_objects": max_objects}
    by_split: dict[str, list[Scene]] = {
        "train": world_split("train", n_train, seed, **opts),
        "test": world_split("test", n_test, seed, **opts),
        "val": world_split("val", n_val, seed, **opts),
    }
    order = [
        (split, scenes[i])
        for i in range(max(n_train, n_test, n_val))
        for split, scenes in by_split.items()
        if i < len(scenes)
    ]
    records = []
    sentid = 0
    for imgid, (split, scene) in enumerate(order):
        cocoid = {"train": 100000, "val": 200000, "test": 300000}[split] + scene.index
        rng = np.random.default_rng([seed, cocoid])
        sentences = []
        for raw in caption_variants(scene.caption, rng):
            tokens = [
                t for t in raw.lower().replace(".", " ").replace(":", " ").replace(",", " ").split()
            ]
            sentences.append({"tokens": tokens, "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        record: dict[str, Any] = {}
        if dataset == "coco":
            filepath = "train2014" if split == "train" else "val2014"
            filename = f"COCO_{filepath}_{cocoid:012d}.{image_format}"
            _save(scene.image, root / filepath / filename, image_format)
            record = {"filepath": filepath, "filename": filename, "cocoid": cocoid}
        else:
            filename = f"{cocoid}.{image_format}"
            _save(scene.image, root / "flickr30k-images" / filename, image_format)
            record = {"filename": filename}
        record.update(
            imgid=imgid,
            split=split,
            sentids=[s["sentid"] for s in sentences],
            sentences=sentences,
        )
        records.append(record)
    name = "dataset_coco.json" if dataset == "coco" else "dataset_flickr30k.json"
    (root / name).write_text(json.dumps({"images": records, "dataset": dataset}))
    return root


def write_class_folders(
    folder: str | os.PathLike[str],
    n_per_class: int = 10,
    *,
    classes: Sequence[str] = DEFAULT_CLASSES,
    seed: int = 0,
    image_size: int = 32,
) -> Path:
    """Write one folder per class (``red_circle/000000.png``, ...) of one-object scenes.

    Each image is one object of the class's colour and shape with a drawn size and position on
    a drawn background (`vlm_lens.world.make_scene`).

    Args:
        folder: where to write (created).
        n_per_class: images per class.
        classes: ``"colour shape"`` names (`vlm_lens.world.COLOURS`, `vlm_lens.world.SHAPES`).
        seed: seed of the draws.
        image_size: image side in pixels.

    Returns:
        The folder.
    """
    root = Path(folder)
    for c, name in enumerate(classes):
        parts = name.split()
        if len(parts) != 2 or parts[0] not in COLOURS or parts[1] not in SHAPES:
            raise VLMInputError(
                f"class {name!r} is not 'colour shape' with a world colour {tuple(COLOURS)} and "
                f"shape {SHAPES}"
            )
        rng = np.random.default_rng([seed, c])
        for i in range(n_per_class):
            obj = WorldObject(
                parts[1],
                parts[0],
                SIZES[int(rng.integers(len(SIZES)))],
                POSITIONS[int(rng.integers(len(POSITIONS)))],
            )
            scene = make_scene([obj], int(rng.integers(2**31 - 1)), image_size)
            _save(scene.image, root / name.replace(" ", "_") / f"{i:06d}.png", "png")
    return root


def to_hf_dataset(items: Sequence[EvalItem], kind: Literal["vqa", "captions", "classes"]) -> Any:
    """A ``datasets.Dataset`` of `items` with the column names of the usual hub datasets.

    VQA: ``image``, ``question``, ``answers`` (``{"answer", "answer_confidence",
    "answer_id"}`` structs, as ``HuggingFaceM4/VQAv2``), ``question_id``; captions: ``image``,
    ``caption`` (a list, as ``nlphuji/flickr30k``), ``img_id``; classes: ``image``, ``label``
    (a ``ClassLabel`` of the sorted labels), ``id``. Images are stored encoded (PNG).

    Raises:
        VLMInputError: if ``datasets`` is not installed.
    """
    try:
        import datasets
    except ImportError:
        raise VLMInputError("to_hf_dataset needs the optional `datasets` package") from None
    images = [load_item_image(item) for item in items]
    features: dict[str, Any] = {"image": datasets.Image()}
    columns: dict[str, list[Any]] = {"image": images}
    if kind == "vqa":
        columns["question"] = [item.question for item in items]
        columns["answers"] = [
            [
                {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                for i, a in enumerate(item.references)
            ]
            for item in items
        ]
        columns["question_id"] = [int(item.id) if item.id.isdigit() else item.id for item in items]
        answer = {
            "answer": datasets.Value("string"),
            "answer_confidence": datasets.Value("string"),
            "answer_id": datasets.Value("int64"),
        }
        features["question"] = datasets.Value("string")
        features["answers"] = [answer]
        features["question_id"] = datasets.Value(
            "int64" if all(i.id.isdigit() for i in items) else "string"
        )
    elif kind == "captions":
        columns["caption"] = [list(item.references) for item in items]
        columns["img_id"] = [item.id for item in items]
        features["caption"] = [datasets.Value("string")]
        features["img_id"] = datasets.Value("string")
    elif kind == "classes":
        names = sorted({str(item.label) for item in items})
        columns["label"] = [names.index(str(item.label)) for item in items]
        columns["id"] = [item.id for item in items]
        features["label"] = datasets.ClassLabel(names=names)
        features["id"] = datasets.Value("string")
    else:
        raise VLMInputError(f"kind must be 'vqa', 'captions' or 'classes'; got {kind!r}")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))

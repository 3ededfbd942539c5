"""VQAv2 from the official files: questions JSON, annotations JSON and a COCO image folder.

The files as the VQA site distributes them (``v2_OpenEnded_mscoco_val2014_questions.json``,
``v2_mscoco_val2014_annotations.json``, COCO's ``val2014/`` images):

- questions: ``{"data_subtype": "val2014", "questions": [{"image_id", "question",
  "question_id"}, ...], ...}``;
- annotations: ``{"annotations": [{"question_id", "image_id", "answers": [{"answer",
  "answer_confidence", "answer_id"}, ...], "multiple_choice_answer", ...}, ...], ...}``;
- images: ``COCO_val2014_%012d.jpg`` (``COCO_{data_subtype}_...``) or plain ``%012d.jpg``.

The paper's sample is 2,000 questions drawn with seed 42 (`random_subset`): ``limit`` and
``seed`` change it.

Example:
    >>> import tempfile
    >>> from vlm_lens.evaluate.fixtures import write_vqav2
    >>> folder = write_vqav2(tempfile.mkdtemp(), n_images=2)
    >>> items = read_vqav2_folder(folder)
    >>> len(items), len(items[0].references), items[0].question
    (10, 10, 'what colour is the shape at the top left?')
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from vlm_lens.errors import VLMInputError
from vlm_lens.evaluate.items import EvalItem
from vlm_lens.evaluate.readers._common import (
    check_image,
    existing_dir,
    load_json,
    random_subset,
    require,
    shape_error,
)

__all__ = ["PAPER_VQA_QUESTIONS", "find_vqav2_files", "read_vqav2", "read_vqav2_folder"]

PAPER_VQA_QUESTIONS = 2000
"""The paper's VQAv2 sample size (drawn with seed 42)."""

_QUESTIONS = (
    'an official VQA questions file ({"questions": [{"image_id", "question", "question_id"}]})'
)
_ANNOTATIONS = (
    'an official VQA annotations file ({"annotations": [{"question_id", "image_id", '
    '"answers": [{"answer", ...}]}]})'
)
_IMAGE_NAME = re.compile(r"^(?:COCO_[A-Za-z0-9]+_)?(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)


def _image_index(folders: list[Path]) -> dict[int, Path]:
    """COCO image id -> file, from the names of the images directly in `folders` (first wins)."""
    index: dict[int, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                match = _IMAGE_NAME.match(entry.name)
                if match is not None:
                    index.setdefault(int(match.group(1)), Path(entry.path))
    return index


def _has_images(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        return any(_IMAGE_NAME.match(entry.name) for entry in entries)


def _records(data: Any, key: str, path: Path, what: str) -> list[Any]:
    if isinstance(data, dict) and isinstance(data.get(key), list):
        return data[key]
    if isinstance(data, dict):
        detail = f"it has no {key!r} list (its keys: {sorted(data)})"
    else:
        detail = f"it holds a JSON {type(data).__name__}, not an object"
    raise shape_error(path, "a VQA file", what, detail)


def read_vqav2(
    questions: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    images: str | os.PathLike[str],
    *,
    limit: int | None = PAPER_VQA_QUESTIONS,
    seed: int = 42,
) -> list[EvalItem]:
    """VQAv2 items from the official questions and annotations files and a COCO image folder.

    Args:
        questions: the questions JSON.
        annotations: the annotations JSON (every sampled question needs its annotation; the
            test splits have none).
        images: the folder holding the images (``COCO_val2014_%012d.jpg`` or ``%012d.jpg``).
        limit: how many questions, drawn with `seed` (`random_subset`); ``None``: all, in file
            order. Default: the paper's 2,000.
        seed: the seed of the draw (the paper: 42).

    Returns:
        One `EvalItem` per question, in file order: ``id`` the question id (a string),
        ``image`` the image path, ``question``, ``references`` the annotators' answers as stored.

    Raises:
        VLMInputError: a missing or invalid file, a file of another shape, a question without an
            annotation, or a sampled question whose image is missing or does not open.
    """
    qpath, apath = Path(questions), Path(annotations)
    image_dir = existing_dir(images, "the VQA image folder")
    qdata = load_json(qpath, "the VQA questions file")
    question_records = _records(qdata, "questions", qpath, _QUESTIONS)
    answer_records = _records(
        load_json(apath, "the VQA annotations file"), "annotations", apath, _ANNOTATIONS
    )
    answers_of: dict[int, list[str]] = {}
    for i, ann in enumerate(answer_records):
        require(
            ann,
            ("question_id", "answers"),
            apath,
            "a VQA annotations file",
            _ANNOTATIONS,
            f"annotation {i}",
        )
        entries = ann["answers"]
        if not isinstance(entries, list) or not all(
            isinstance(a, dict) and isinstance(a.get("answer"), str) for a in entries
        ):
            detail = (
                f"annotation {i} (question {ann['question_id']}) has 'answers' that are not a "
                "list of {'answer': str, ...}"
            )
            raise shape_error(apath, "a VQA annotations file", _ANNOTATIONS, detail)
        answers_of[int(ann["question_id"])] = [a["answer"] for a in entries]
    chosen = random_subset(len(question_records), limit, seed)
    index = _image_index([image_dir])
    items = []
    for i in chosen:
        q = question_records[i]
        require(
            q,
            ("image_id", "question", "question_id"),
            qpath,
            "a VQA questions file",
            _QUESTIONS,
            f"question {i}",
        )
        qid, image_id = int(q["question_id"]), int(q["image_id"])
        if qid not in answers_of:
            raise VLMInputError(
                f"question {qid} of {qpath} has no annotation in {apath}; use the annotations of "
                "the same split (the VQAv2 test splits have no public answers)"
            )
        image = index.get(image_id)
        if image is None:
            subtype = qdata.get("data_subtype", "val2014") if isinstance(qdata, dict) else "val2014"
            raise VLMInputError(
                f"the image of question {qid} (image_id {image_id}) is not in {image_dir}: "
                f"expected COCO_{subtype}_{image_id:012d}.jpg or {image_id:012d}.jpg"
            )
        check_image(image, f"question {qid}")
        items.append(
            EvalItem(
                id=str(qid),
                image=str(image),
                question=str(q["question"]),
                references=tuple(answers_of[qid]),
            )
        )
    return items


def find_vqav2_files(folder: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """``(questions, annotations, images)`` in a VQAv2 folder.

    The folder holds one ``*questions*.json`` and one ``*annotations*.json``; the images are the
    first of ``val2014/``, ``images/``, the folder itself and its other subfolders (by name)
    that holds COCO-named images.

    Raises:
        VLMInputError: if the folder is missing, or has no (or several) questions or
            annotations files, or no images.
    """
    root = existing_dir(folder, "the VQAv2 folder")

    def one(pattern: str, what: str) -> Path:
        found = sorted(root.glob(pattern))
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise VLMInputError(
                f"{root} should hold exactly one {what} file ({pattern}), found {names}; keep "
                "one, or call read_vqav2 with explicit paths"
            )
        return found[0]

    questions = one("*questions*.json", "VQA questions")
    annotations = one("*annotations*.json", "VQA annotations")
    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    preferred = [root / "val2014", root / "images", root]
    for candidate in preferred + [p for p in subfolders if p not in preferred]:
        if _has_images(candidate):
            return questions, annotations, candidate
    raise VLMInputError(
        f"{root} has no COCO images (COCO_val2014_%012d.jpg or %012d.jpg) in val2014/, images/, "
        "another subfolder or the folder itself; put the images there"
    )


def read_vqav2_folder(
    folder: str | os.PathLike[str], *, limit: int | None = PAPER_VQA_QUESTIONS, seed: int = 42
) -> list[EvalItem]:
    """`read_vqav2` on the files `find_vqav2_files` finds in `folder`."""
    questions, annotations, images = find_vqav2_files(folder)
    return read_vqav2(questions, annotations, images, limit=limit, seed=seed)

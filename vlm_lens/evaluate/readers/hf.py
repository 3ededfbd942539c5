"""Items from a Hugging Face ``datasets`` dataset (in memory, or a ``save_to_disk`` folder).

Any dataset with an image column and, per task kind, a question and answers column (VQA), a
captions column (captions) or a label column (classification) works; the columns are found by
name (`COLUMNS`) or named by the caller. Typical layouts:

- VQA (``HuggingFaceM4/VQAv2``): ``image``, ``question``, ``answers`` (a list of
  ``{"answer", "answer_confidence", "answer_id"}`` or of strings), ``question_id``;
- captions (``nlphuji/flickr30k``): ``image``, ``caption`` (a list of strings) or
  ``sentences`` (strings or ``{"raw"}`` dicts), an id column such as ``img_id`` or ``cocoid``;
- classification: ``image``, ``label`` (a ``ClassLabel``, whose names become the labels, or
  strings).

Images stay encoded until used: an ``Image`` column is read undecoded, and each item holds the
file path when the dataset points at an existing file, else a lazily opened PIL image of the
stored bytes. A column of path strings is taken relative to `image_root`; so are
``filepath``/``filename`` columns when there is no image column (``yerevann/coco-karpathy``).

``datasets`` is optional: these functions import it when called and say how to install it.

Example:
    >>> import datasets
    >>> from PIL import Image
    >>> columns = {"image": [Image.new("RGB", (8, 8))], "question": ["what?"]}
    >>> ds = datasets.Dataset.from_dict({**columns, "answers": [["red"] * 10]})
    >>> item = read_hf_dataset(ds, "vqa")[0]
    >>> item.id, item.question, item.references[:2], item.image.size
    ('0', 'what?', ('red', 'red'), (8, 8))
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from vlm_lens.data.examples import ImageSource
from vlm_lens.errors import VLMInputError
from vlm_lens.evaluate.items import EvalItem
from vlm_lens.evaluate.readers._common import check_image, first, random_subset

__all__ = ["COLUMNS", "DEFAULT_SPLITS", "is_hf_dataset_dir", "load_hf_dataset", "read_hf_dataset"]

Kind = Literal["vqa", "captions", "classes"]

COLUMNS: Mapping[str, tuple[str, ...]] = {
    "image": ("image", "img", "picture", "image_path"),
    "question": ("question", "query"),
    "answers": ("answers", "answer", "references"),
    "captions": ("captions", "caption", "sentences", "references", "raw"),
    "label": ("label", "labels", "class", "fine_label"),
    "id": ("question_id", "cocoid", "img_id", "image_id", "id", "filename"),
}
"""Column names tried, in order, for each role (the first present wins)."""

DEFAULT_SPLITS: Mapping[str, tuple[str, ...]] = {
    "vqa": ("validation", "val"),
    "captions": ("test",),
    "classes": ("validation", "val", "test"),
}
"""The split of a ``DatasetDict`` each kind reads when none is given (the first present)."""

_INSTALL = "install the optional `datasets` package (pip install datasets)"


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise VLMInputError(
            f"reading a Hugging Face dataset needs `datasets`; {_INSTALL}"
        ) from None
    return datasets


def is_hf_dataset_dir(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder written by ``Dataset.save_to_disk`` or
    ``DatasetDict.save_to_disk``.

    Example:
        >>> is_hf_dataset_dir(".")
        False
    """
    p = Path(path)
    return (p / "dataset_dict.json").is_file() or (
        (p / "state.json").is_file() and (p / "dataset_info.json").is_file()
    )


def load_hf_dataset(path: str | os.PathLike[str], kind: Kind, split: str | None = None) -> Any:
    """``datasets.load_from_disk(path)``, and for a ``DatasetDict`` its split `split` (default:
    the first of `DEFAULT_SPLITS` present, or the only split).

    Raises:
        VLMInputError: if `path` is not a saved dataset, or the split is not there.
    """
    if not is_hf_dataset_dir(path):
        raise VLMInputError(
            f"{path} is not a folder written by datasets' save_to_disk (no dataset_dict.json, or "
            "state.json and dataset_info.json); check the path"
        )
    loaded = _datasets().load_from_disk(str(path))
    if not hasattr(loaded, "keys"):
        return loaded
    names = list(loaded.keys())
    if split is None:
        split = next((s for s in DEFAULT_SPLITS[kind] if s in names), None)
        if split is None and len(names) == 1:
            split = names[0]
    if split not in names:
        raise VLMInputError(f"{path} has the splits {names}, not {split!r}; name the split to read")
    return loaded[split]


def _column(dataset: Any, role: str, given: str | None) -> str:
    names = list(dataset.column_names)
    if given is not None:
        if given not in names:
            raise VLMInputError(f"the dataset has no column {given!r} (its columns: {names})")
        return given
    for candidate in COLUMNS[role]:
        if candidate in names:
            return candidate
    raise VLMInputError(
        f"the dataset has no {role} column (tried {list(COLUMNS[role])}; its columns: {names}); "
        f"name it with {role}_column="
    )


def _image(value: Any, image_root: Path | None, where: str) -> ImageSource:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        path, data = value.get("path"), value.get("bytes")
        if path and Path(path).is_file():
            return str(check_image(Path(path), where))
        if data is None:
            raise VLMInputError(
                f"the image of {where} has neither bytes nor an existing path ({path!r})"
            )
        try:
            return Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError) as exc:
            raise VLMInputError(
                f"the image of {where} cannot be opened ({exc}); fix the dataset"
            ) from None
    if isinstance(value, (str, os.PathLike)):
        p = Path(value)
        if not p.is_absolute() and image_root is not None:
            p = image_root / p
        return str(check_image(p, where))
    raise VLMInputError(
        f"the image of {where} is a {type(value).__name__}; expected an image, a path or "
        "{'bytes', 'path'}"
    )


def _strings(value: Any, key: str, role: str, where: str) -> tuple[str, ...]:
    """A column value as a tuple of strings: a string, a list of strings, a list of dicts with
    `key`, or a dict of lists (a ``Sequence`` of structs) with `key`."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, dict) and isinstance(value.get(key), list):
        value = value[key]
    if isinstance(value, list):
        out = [v.get(key) if isinstance(v, dict) else v for v in value]
        strings = [v for v in out if isinstance(v, str)]
        if out and len(strings) == len(out):
            return tuple(strings)
    raise VLMInputError(
        f"the {role} of {where} are not strings (or a list of strings, or of {{{key!r}: str}}): "
        f"{value!r:.200}"
    )


def read_hf_dataset(
    dataset: Any,
    kind: Kind,
    *,
    limit: int | None = None,
    seed: int = 42,
    image_column: str | None = None,
    question_column: str | None = None,
    answers_column: str | None = None,
    captions_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
) -> list[EvalItem]:
    """Items of a ``datasets.Dataset``.

    Args:
        dataset: the dataset (in memory; see `load_hf_dataset` for a saved one).
        kind: ``"vqa"``, ``"captions"`` or ``"classes"``.
        limit: VQA and classes: that many rows drawn with `seed`; captions: the first `limit`
            rows; ``None``: every row.
        seed: the seed of the draw.
        image_column: the image column's name (default, for every column: the first of
            `COLUMNS` present).
        question_column: the question column's name.
        answers_column: the answers column's name.
        captions_column: the captions column's name.
        label_column: the label column's name.
        id_column: the id column's name (default: the row number when none is present).
        image_root: the folder relative image paths are in.

    Returns:
        One `EvalItem` per row.

    Raises:
        VLMInputError: a missing column, a value of the wrong type, an image that does not
            open, or duplicate ids.
    """
    ds = _datasets()
    if not isinstance(dataset, ds.Dataset):
        raise VLMInputError(
            f"read_hf_dataset needs a datasets.Dataset, got {type(dataset).__name__}; pick a "
            "split of a DatasetDict (dataset['validation'])"
        )
    if kind not in DEFAULT_SPLITS:
        raise VLMInputError(f"kind must be 'vqa', 'captions' or 'classes'; got {kind!r}")
    columns = list(dataset.column_names)
    # Without an image column, Karpathy-style rows (``yerevann/coco-karpathy``) name their file
    # by ``filepath`` (a folder such as ``val2014``) and ``filename``, under `image_root`.
    by_filename = image_column is None and "filename" in columns
    by_filename = by_filename and not any(c in columns for c in COLUMNS["image"])
    image_col = "filename" if by_filename else _column(dataset, "image", image_column)
    if isinstance(dataset.features[image_col], ds.Image):
        dataset = dataset.cast_column(image_col, ds.Image(decode=False))
    text_col = {
        "vqa": lambda: _column(dataset, "answers", answers_column),
        "captions": lambda: _column(dataset, "captions", captions_column),
        "classes": lambda: _column(dataset, "label", label_column),
    }[kind]()
    question_col = _column(dataset, "question", question_column) if kind == "vqa" else None
    try:
        id_col: str | None = _column(dataset, "id", id_column)
    except VLMInputError:
        if id_column is not None:
            raise
        id_col = None
    label_feature = dataset.features[text_col] if kind == "classes" else None
    names = getattr(label_feature, "names", None)
    root = None if image_root is None else Path(image_root)
    n = len(dataset)
    rows = first(n, limit) if kind == "captions" else random_subset(n, limit, seed)
    items: list[EvalItem] = []
    seen: set[str] = set()
    for i in rows:
        row = dataset[i]
        item_id = str(i) if id_col is None else str(row[id_col])
        where = f"row {i} (id {item_id})"
        if item_id in seen:
            raise VLMInputError(
                f"two rows have the id {item_id!r} in column {id_col!r}; name a unique id_column"
            )
        seen.add(item_id)
        value = row[image_col]
        if by_filename and isinstance(row.get("filepath"), str):
            value = os.path.join(row["filepath"], value)
        image = _image(value, root, where)
        if kind == "vqa":
            question = row[question_col]
            if not isinstance(question, str):
                raise VLMInputError(f"the question of {where} is not a string: {question!r:.200}")
            refs = _strings(row[text_col], "answer", "answers", where)
            items.append(EvalItem(item_id, image, question=question, references=refs))
        elif kind == "captions":
            refs = _strings(row[text_col], "raw", "captions", where)
            items.append(EvalItem(item_id, image, references=refs))
        else:
            value = row[text_col]
            label = names[value] if names is not None and isinstance(value, int) else value
            if not isinstance(label, (str, int)) or isinstance(label, bool):
                raise VLMInputError(
                    f"the label of {where} is not a string or class index: {value!r:.200}"
                )
            items.append(EvalItem(item_id, image, label=str(label)))
    return items

"""Captions from a Karpathy-split JSON (``dataset_coco.json``, ``dataset_flickr30k.json``).

The format (Karpathy & Fei-Fei 2015's splits, as most captioning code reads them):
``{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw", "tokens", ...}, ...],
"cocoid"?, "imgid", ...}, ...], "dataset": "coco"}``. ``split`` is ``train``, ``restval``,
``val`` or ``test``; COCO entries carry ``filepath`` (``val2014``) and ``cocoid``, Flickr30k
entries only ``filename``.

An image is looked up as ``{root}/{filepath}/{filename}`` and then ``{root}/{filename}`` for each
image root. References are the ``raw`` sentences (pycocoevalcap's tokenizer tokenizes them).
The paper's sample is the first 2,000 test images (file order).

Example:
    >>> import tempfile
    >>> from vlm_lens.evaluate.fixtures import write_karpathy
    >>> folder = write_karpathy(tempfile.mkdtemp(), "coco", n_test=3, n_train=2)
    >>> items = read_karpathy_folder(folder, "dataset_coco.json")
    >>> len(items), len(items[0].references)
    (3, 5)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vlm_lens.errors import VLMInputError
from vlm_lens.evaluate.items import EvalItem
from vlm_lens.evaluate.readers._common import (
    check_image,
    existing_dir,
    first,
    load_json,
    require,
    shape_error,
)

__all__ = [
    "PAPER_CAPTION_IMAGES",
    "image_roots",
    "read_karpathy",
    "read_karpathy_folder",
]

PAPER_CAPTION_IMAGES = 2000
"""The paper's caption sample: the first 2,000 test images."""

_EXPECTED = (
    'a Karpathy-split file ({"images": [{"filename", "split", "sentences": [{"raw", ...}], '
    '"cocoid" or "imgid", ...}]})'
)


def image_roots(folder: Path) -> list[Path]:
    """Where a caption folder's images may lie: ``images/``, ``flickr30k-images/`` and the
    folder itself (those that exist)."""
    return [p for p in (folder / "images", folder / "flickr30k-images", folder) if p.is_dir()]


def _image_path(roots: Sequence[Path], filepath: str | None, filename: str) -> Path | None:
    for root in roots:
        for candidate in ([root / filepath / filename] if filepath else []) + [root / filename]:
            if candidate.is_file():
                return candidate
    return None


def read_karpathy(
    path: str | os.PathLike[str],
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    split: str = "test",
    limit: int | None = PAPER_CAPTION_IMAGES,
) -> list[EvalItem]:
    """Caption items of one split of a Karpathy-split JSON file.

    Args:
        path: ``dataset_coco.json``, ``dataset_flickr30k.json`` or a file of the same shape.
        images: the image root (or several, searched in order).
        split: which split (``"test"``, ``"val"``, ``"train"``, ``"restval"``).
        limit: the first `limit` images of the split in file order; ``None``: all. Default: the
            paper's 2,000.

    Returns:
        One `EvalItem` per image: ``id`` its ``cocoid`` (COCO) or, without one, its
        ``filename``; ``image`` the path; ``references`` the raw sentences.

    Raises:
        VLMInputError: a missing or invalid file, another shape, a split with no images, two
            images with one id, or an image that is missing or does not open.
    """
    p = Path(path)
    data = load_json(p, "the Karpathy-split captions file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        detail = (
            f"it has no 'images' list (its keys: {sorted(data)})"
            if isinstance(data, dict)
            else f"it holds a JSON {type(data).__name__}, not an object"
        )
        raise shape_error(p, "a Karpathy-split captions file", _EXPECTED, detail)
    roots_in = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    roots = [existing_dir(r, "the caption image folder") for r in roots_in]
    records = data["images"]
    for i, rec in enumerate(records):
        require(
            rec,
            ("filename", "split", "sentences"),
            p,
            "a Karpathy-split file",
            _EXPECTED,
            f"image {i}",
        )
    in_split = [rec for rec in records if rec["split"] == split]
    if not in_split:
        found = sorted({str(rec["split"]) for rec in records})
        raise VLMInputError(
            f"{p} has no images in split {split!r} (its splits: {found}); pick one of those"
        )
    items: list[EvalItem] = []
    seen: set[str] = set()
    for i in first(len(in_split), limit):
        rec = in_split[i]
        sentences = rec["sentences"]
        if (
            not isinstance(sentences, list)
            or not sentences
            or not all(isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sentences)
        ):
            detail = (
                f"the sentences of {rec['filename']!r} are not a non-empty list of "
                "{'raw': str, ...}"
            )
            raise shape_error(p, "a Karpathy-split file", _EXPECTED, detail)
        item_id = str(rec["cocoid"]) if "cocoid" in rec else str(rec["filename"])
        if item_id in seen:
            raise VLMInputError(
                f"{p} lists the image {item_id!r} twice in split {split!r}; remove the duplicate"
            )
        seen.add(item_id)
        filepath = rec.get("filepath")
        image = _image_path(
            roots, None if filepath is None else str(filepath), str(rec["filename"])
        )
        if image is None:
            where = " or ".join(str(r) for r in roots)
            raise VLMInputError(
                f"the image {rec['filename']!r} of {p} is not in {where} (looked for "
                f"{{root}}/{filepath or ''}/{rec['filename']} and {{root}}/{rec['filename']}); "
                "point the reader at the image folder"
            )
        check_image(image, f"caption image {item_id}")
        items.append(
            EvalItem(id=item_id, image=str(image), references=tuple(s["raw"] for s in sentences))
        )
    return items


def read_karpathy_folder(
    folder: str | os.PathLike[str],
    filename: str | None = None,
    *,
    split: str = "test",
    limit: int | None = PAPER_CAPTION_IMAGES,
) -> list[EvalItem]:
    """`read_karpathy` on a folder holding the JSON and the images (see `image_roots`).

    Args:
        folder: the folder.
        filename: the JSON's name; ``None``: the folder's only ``dataset_*.json``.
        split: see `read_karpathy`.
        limit: see `read_karpathy`.

    Raises:
        VLMInputError: as `read_karpathy`, and when the JSON is not found.
    """
    root = existing_dir(folder, "the captions folder")
    if filename is None or not (root / filename).is_file():
        found = sorted(root.glob("dataset_*.json"))
        if len(found) != 1:
            wanted = filename or "dataset_*.json"
            names = ", ".join(f.name for f in found) or "none"
            raise VLMInputError(
                f"{root} should hold the Karpathy-split file {wanted} (found {names}); put it "
                "there or call read_karpathy with its path"
            )
        path = found[0]
    else:
        path = root / filename
    return read_karpathy(path, image_roots(root), split=split, limit=limit)

"""Classification images in one folder per class (ImageNet style), for χ_out.

``root/{class}/{image}``: the label is the class folder's name (an ImageNet wnid such as
``n01440764``, or any name), the id the image's path relative to the root. Hidden files and
files whose suffix is not an image suffix are skipped. Images are listed class by class (folders
sorted by name), files sorted by name.

Example:
    >>> import tempfile
    >>> from vlm_lens.evaluate.fixtures import write_class_folders
    >>> folder = write_class_folders(tempfile.mkdtemp(), n_per_class=2)
    >>> items = read_class_folders(folder)
    >>> len(items), items[0].label, items[0].id
    (8, 'blue_square', 'blue_square/000000.png')
"""

from __future__ import annotations

import os
from pathlib import Path

from vlm_lens.errors import VLMInputError
from vlm_lens.evaluate.items import EvalItem
from vlm_lens.evaluate.readers._common import (
    IMAGE_SUFFIXES,
    check_image,
    existing_dir,
    random_subset,
)

__all__ = ["read_class_folders"]


def read_class_folders(
    folder: str | os.PathLike[str], *, limit: int | None = None, seed: int = 42
) -> list[EvalItem]:
    """Items of an ImageNet-style folder: one subfolder per class.

    Args:
        folder: the root, whose subfolders are the classes.
        limit: how many images, drawn with `seed` over all images (then in listing order);
            ``None`` (default): all of them (the paper: 100 classes × 100 images).
        seed: the seed of the draw.

    Returns:
        One `EvalItem` per image, ``label`` its class folder's name.

    Raises:
        VLMInputError: if the folder is missing, has no class folder with images, or an image
            does not open.
    """
    root = existing_dir(folder, "the class-folder dataset")
    paths: list[tuple[Path, str]] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append((f, class_dir.name))
    if not paths:
        raise VLMInputError(
            f"{root} has no class folders with images (expected {root}/CLASS/IMAGE.jpg, one "
            "folder per class)"
        )
    items = []
    for i in random_subset(len(paths), limit, seed):
        path, label = paths[i]
        check_image(path, f"class {label!r}")
        items.append(EvalItem(id=path.relative_to(root).as_posix(), image=str(path), label=label))
    return items

"""The images a report runs on: the built-in synthetic world, or a user's folder.

A folder is either flat (``DIR/*.jpg``: no labels) or has one subfolder per label
(``DIR/<label>/*.jpg``); labels feed χ and the choice of patching pairs. The built-in set is
held-out single-object scenes of `vlm_lens.world`, labelled by their colour (what the
organisms' default question asks about).

Example:
    >>> images = world_images(4)
    >>> len(images), len(set(images.labels)), images.scenes is not None  # 4 colours, balanced
    (4, 4, True)
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vlm_lens.errors import ReportInputError
from vlm_lens.world import COLOURS, Scene, world_split

EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
"""Image file extensions read from a folder (case-insensitive)."""

FOLDER_HINT = "pass a folder of images (.jpg, .png, ...), optionally one subfolder per label"


@dataclass(frozen=True)
class ImageSet:
    """Images with optional labels.

    Attributes:
        images: RGB images.
        labels: one label per image, or ``None``.
        names: one name per image (file path relative to the folder, or the scene id).
        source: a description of where the images come from.
        scenes: the world scenes (with their questions and answers), or ``None``.
    """

    images: tuple[Image.Image, ...]
    labels: tuple[str, ...] | None
    names: tuple[str, ...]
    source: str
    scenes: tuple[Scene, ...] | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_classes(self) -> int:
        """Number of distinct labels (0 without labels)."""
        return len(set(self.labels)) if self.labels is not None else 0


def world_images(n: int = 48, seed: int = 0) -> ImageSet:
    """``n`` held-out single-object scenes of the synthetic world, labelled by colour.

    The colours are balanced: the scenes are taken a colour at a time, in `COLOURS` order and
    each colour's test-split order, so every class has ``n // 6`` or ``n // 6 + 1`` members
    (χ with ``k`` neighbours is informative only when ``k`` is below the smallest class).

    Example:
        >>> from collections import Counter
        >>> sorted(Counter(world_images(12).labels).values())
        [2, 2, 2, 2, 2, 2]
    """
    pool = world_split("test", max(4 * n, 64), seed=seed, max_objects=1)
    by_colour: dict[str, list[Scene]] = defaultdict(list)
    for scene in pool:
        by_colour[scene.objects[0].colour].append(scene)
    queues = [by_colour[c] for c in COLOURS if by_colour[c]]
    picked: list[Scene] = []
    for depth in range(len(pool)):  # colour by colour, a scene of each in turn
        picked += [q[depth] for q in queues if depth < len(q)]
        if len(picked) >= n:
            break
    scenes = sorted(picked[:n], key=lambda s: s.index)
    return ImageSet(
        images=tuple(s.image for s in scenes),
        labels=tuple(s.objects[0].colour for s in scenes),
        names=tuple(f"world test #{s.index}" for s in scenes),
        source=f"built-in synthetic world: {n} single-object test scenes (seed {seed}), "
        "labelled by colour, balanced",
        scenes=tuple(scenes),
    )


def folder_images(folder: str | os.PathLike[str], n: int | None = None) -> ImageSet:
    """Images of `folder` (flat, or one subfolder per label), at most `n` of them.

    With labels, the `n` images are taken in turn from each label (sorted), so every class is
    represented; files are read in sorted order.

    Raises:
        ReportInputError: for a missing folder, no images, a folder that mixes top-level images
            with label subfolders, or an image that cannot be read.

    Example:
        >>> try:
        ...     folder_images("/no/such/folder")
        ... except ReportInputError as error:
        ...     print(str(error)[:50])
        images folder '/no/such/folder' does not exist; pa
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise ReportInputError(f"images folder '{folder}' {what}; {FOLDER_HINT}")
    top = sorted(p for p in root.iterdir() if _is_image(p))
    by_label: dict[str, list[Path]] = defaultdict(list)
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.iterdir() if _is_image(p))
        if files:
            by_label[sub.name] = files
    if top and by_label:
        raise ReportInputError(
            f"images folder '{folder}' has images at its top level and in subfolders "
            f"{sorted(by_label)}; put every image in a label subfolder, or none"
        )
    if not top and not by_label:
        raise ReportInputError(f"images folder '{folder}' holds no images; {FOLDER_HINT}")
    if by_label:
        picked = _round_robin(by_label, n)
        labels: tuple[str, ...] | None = tuple(label for label, _ in picked)
        paths = [path for _, path in picked]
    else:
        paths = top[:n] if n is not None else top
        labels = None
    images = tuple(_read(path) for path in paths)
    kind = f"{len(by_label)} labels (subfolders)" if by_label else "no labels"
    return ImageSet(
        images=images,
        labels=labels,
        names=tuple(str(p.relative_to(root)) for p in paths),
        source=f"folder {root}: {len(images)} images, {kind}",
    )


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def _round_robin(by_label: dict[str, list[Path]], n: int | None) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    depth = 0
    total = sum(len(v) for v in by_label.values())
    limit = total if n is None else min(n, total)
    while len(out) < limit:
        for label in sorted(by_label):
            if depth < len(by_label[label]) and len(out) < limit:
                out.append((label, by_label[label][depth]))
        depth += 1
    return out


def _read(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ReportInputError(
            f"cannot read image '{path}' ({reason}); remove it or convert it to PNG or JPEG"
        ) from None

"""`Example`: one dataset item (image(s), prompt, label), and helpers to build lists of them.

An example holds its images as PIL images, ``[H, W, 3]`` uint8 arrays or file paths. Paths are
opened only when the runner reaches the example's chunk, so a dataset of paths costs no image
memory up front. The prompt is either the example's `text` as written (it must contain the
model's image placeholder, ``model.image_placeholder``, once per image) or built from a template
by `build_prompt`.

Example:
    >>> from vlm_lens.testing import sample_image
    >>> img = sample_image(size=(16, 16))
    >>> examples = make_examples([img, img], ["a cat", "a dog"], labels=["cat", "dog"])
    >>> examples[1].label, len(examples[1].image_list)
    ('dog', 1)
    >>> build_prompt(examples[0], "<image>", "USER: {image}\\nWhat is this? {text}")
    'USER: <image>\\nWhat is this? a cat'
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from vlm_lens.data.digest import file_digest, new_hasher
from vlm_lens.errors import VLMInputError
from vlm_lens.images import to_rgb

ImageSource = Image.Image | np.ndarray | str | os.PathLike
"""One image: a PIL image, an ``[H, W, 3]`` uint8 array, or a path to an image file."""


@dataclass(frozen=True)
class Example:
    """One dataset item.

    Attributes:
        images: one image (PIL image, ``[H, W, 3]`` array or path) or a list of them; an empty
            tuple for a text-only prompt.
        text: the prompt, with one image placeholder per image when used as is, or the text a
            prompt template inserts as ``{text}`` (see `build_prompt`).
        label: optional class label (int or str), stored with the activations.
        id: optional identifier (int or str), stored with the activations.
        metadata: optional JSON-serialisable extras, stored with the activations.

    Example:
        >>> Example("photo.png", "<image> A photo of", label=3).image_list
        ['photo.png']
    """

    images: ImageSource | Sequence[ImageSource] = ()
    text: str = ""
    label: int | str | None = None
    id: int | str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def image_list(self) -> list[ImageSource]:
        """The images as a list (one entry per placeholder, in prompt order)."""
        if isinstance(self.images, (Image.Image, np.ndarray, str, os.PathLike)):
            return [self.images]
        return list(self.images)

    def load_images(self) -> list[Image.Image | np.ndarray]:
        """The images with paths opened (as RGB PIL images); in-memory images as they are."""
        return [load_image(img) for img in self.image_list]

    def record(self) -> dict[str, Any]:
        """``{"id", "label", "metadata"}``: what a store keeps about the example."""
        return {"id": self.id, "label": self.label, "metadata": dict(self.metadata)}


PromptSpec = str | Callable[[Example, str], str] | None
"""How a prompt is built: ``None`` (the example's `text` as is), a `str.format` template with
fields ``{image}`` (the placeholder), ``{text}``, ``{label}``, ``{id}`` and the metadata keys, or
a callable ``(example, placeholder) -> prompt``."""


def make_examples(
    images: Sequence[ImageSource | Sequence[ImageSource]],
    texts: str | Sequence[str],
    *,
    labels: Sequence[int | str] | None = None,
    ids: Sequence[int | str] | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
) -> list[Example]:
    """Zip parallel lists into `Example` objects.

    Args:
        images: one entry per example (an image, a path, or a list of them).
        texts: one prompt (or template text) per example, or one string for all.
        labels: optional, one per example.
        ids: optional, one per example.
        metadata: optional, one dict per example.

    Raises:
        ValueError: if the lists have different lengths.

    Example:
        >>> [e.text for e in make_examples(["a.png", "b.png"], "<image> Describe.")]
        ['<image> Describe.', '<image> Describe.']
    """
    n = len(images)
    texts = [texts] * n if isinstance(texts, str) else list(texts)
    columns = {"texts": texts, "labels": labels, "ids": ids, "metadata": metadata}
    for name, column in columns.items():
        if column is not None and len(column) != n:
            raise ValueError(f"{len(column)} {name} were given for {n} images; give one each")
    return [
        Example(
            images=images[i],
            text=texts[i],
            label=None if labels is None else labels[i],
            id=None if ids is None else ids[i],
            metadata={} if metadata is None else dict(metadata[i]),
        )
        for i in range(n)
    ]


def build_prompt(example: Example, placeholder: str, prompt: PromptSpec = None) -> str:
    """The prompt of `example` for a model whose image placeholder is `placeholder`.

    Args:
        example: the example.
        placeholder: ``model.image_placeholder``.
        prompt: ``None`` (use ``example.text``), a template such as ``"{image} {text}"`` or a
            callable ``(example, placeholder) -> str``.

    Raises:
        VLMInputError: if a template names a field the example does not have.

    Example:
        >>> build_prompt(Example("x.png", "two dogs"), "<image>", "{text} {image}")
        'two dogs <image>'
    """
    if prompt is None:
        return example.text
    if callable(prompt):
        return prompt(example, placeholder)
    fields = {**example.metadata, "text": example.text, "label": example.label, "id": example.id}
    try:
        return prompt.format(image=placeholder, **fields)
    except (KeyError, IndexError) as exc:
        raise VLMInputError(
            f"prompt template {prompt!r} names {exc} but examples only have the fields image, "
            f"text, label, id and their metadata keys {sorted(example.metadata)}"
        ) from None


def load_image(image: ImageSource) -> Image.Image | np.ndarray:
    """Open a path as an 8-bit RGB PIL image (16-bit files scaled, `vlm_lens.images.to_rgb`);
    return in-memory images unchanged.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "grey.png")
        >>> Image.new("L", (4, 4)).save(path)
        >>> load_image(path).mode, load_image(np.zeros((4, 4, 3), np.uint8)).shape
        ('RGB', (4, 4, 3))
    """
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            opened.load()
            return to_rgb(opened)
    return image


def examples_fingerprint(examples: Sequence[Example], prompts: Sequence[str]) -> str:
    """A hash of the prompts, ids, labels, metadata and image contents of a dataset (the
    digest of its `example_digests`, in order), so that a store never mixes two datasets.

    Example:
        >>> examples = make_examples([np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 3), np.uint8)],
        ...                          "<image> Describe.", labels=[0, 1])
        >>> prompts = [e.text for e in examples]
        >>> examples_fingerprint(examples, prompts) == examples_fingerprint(examples[::-1], prompts)
        False
    """
    return digest_of_digests(example_digests(examples, prompts))


def digest_of_digests(digests: Sequence[str]) -> str:
    """One digest for a list of per-example digests (order matters)."""
    hasher = new_hasher()
    for digest in digests:
        hasher.update(digest.encode() + b"\n")
    return str(hasher.hexdigest())


def example_digests(examples: Sequence[Example], prompts: Sequence[str]) -> list[str]:
    """One digest per example of its prompt, id, label, metadata and images: an image file by
    its bytes (read in blocks; the path's name does not count, so a moved dataset is the same
    dataset), an in-memory image by its mode, size and pixels.

    Raises:
        VLMInputError: for an image path that cannot be read, or an image of another type,
            naming the example.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.png")
        >>> Image.new("RGB", (4, 4), "red").save(path)
        >>> examples = [Example(path, "<image> Describe.")]
        >>> before = example_digests(examples, ["<image> Describe."])
        >>> Image.new("RGB", (4, 4), "blue").save(path)  # same path, other pixels
        >>> example_digests(examples, ["<image> Describe."]) == before
        False
    """
    out = []
    for index, (example, prompt) in enumerate(zip(examples, prompts, strict=True)):
        hasher = new_hasher()
        record = {**example.record(), "prompt": prompt}
        hasher.update(json.dumps(record, sort_keys=True, default=str).encode())
        for image in example.image_list:
            hasher.update(_image_key(image, index, example))
        out.append(str(hasher.hexdigest()))
    return out


def _image_key(image: ImageSource, index: int, example: Example) -> bytes:
    if isinstance(image, (str, os.PathLike)):
        try:
            return f"file:{file_digest(image)};".encode()
        except OSError as exc:
            raise VLMInputError(
                f"example {index} (id={example.id!r}): cannot read its image {str(image)!r} "
                f"({exc.strerror or exc}); fix the path or the file"
            ) from None
    if isinstance(image, Image.Image):
        hasher = new_hasher()
        hasher.update(image.tobytes())
        return f"pil:{image.mode}:{image.size}:{hasher.hexdigest()};".encode()
    if isinstance(image, np.ndarray):
        hasher = new_hasher()
        hasher.update(np.ascontiguousarray(image).tobytes())
        return f"array:{image.dtype.str}:{image.shape}:{hasher.hexdigest()};".encode()
    raise VLMInputError(
        f"example {index} (id={example.id!r}): an image must be a PIL image, a numpy array or a "
        f"path, got {type(image).__name__}"
    )

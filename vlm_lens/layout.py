"""Token roles: which positions of a VLM prompt are image, gate, text, padding, ...

A `TokenLayout` records, for every position of every sequence in a batch, the set of *roles* the
position plays. Roles are plain lower-case words, the same everywhere in vlm_lens:

============== =====================================================================================
role           positions
============== =====================================================================================
``bos``        the beginning-of-sequence token (first real token, when it is a BOS id)
``image_start`` every token that opens an image: BOI specials and, for Emu3, the ``H*W`` size text
``image``      image-content positions (placeholders or VQ code tokens), row-end markers excluded
``image_row_end`` Emu3's end-of-row markers inside the image span
``gate``       the single token right after an image span (the paper's "narrow gate")
``image_end``  every special token that closes an image (Emu3: end-of-frame and ``<|image end|>``)
``text``       every other real token (the LLaVA gate is a text token and has both roles)
``last``       the last real token of each sequence
``pad``        padding positions (``attention_mask == 0``)
============== =====================================================================================

A position can have several roles (Chameleon's ``<eoss>`` is ``gate`` and ``image_end``; LLaVA's
first prompt token after the image is ``gate`` and ``text``). The layout also records which image
each image-side position belongs to, so prompts with several images are handled.

This module is pure torch: it knows nothing of TransformerLens or of model families. A family's
`TokenSpec` (built by its adapter in `vlm_lens.adapters`) says which token ids play which part.

Example:
    >>> import torch
    >>> spec = TokenSpec(image_token_ids=frozenset({9}), image_start_token_ids=frozenset({7}),
    ...                  image_end_token_ids=frozenset({8}), bos_token_ids=frozenset({1}))
    >>> layout = TokenLayout.from_input_ids(torch.tensor([[1, 5, 7, 9, 9, 8, 5, 6]]), spec)
    >>> layout.positions("image")[0].tolist(), layout.positions("gate")[0].tolist()
    ([3, 4], [5])
    >>> layout.positions("text", after="image")[0].tolist()
    [6, 7]
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Int
from torch import Tensor

ROLES: tuple[str, ...] = (
    "bos",
    "image_start",
    "image",
    "image_row_end",
    "gate",
    "image_end",
    "text",
    "last",
    "pad",
)
"""Every role a position can have, in display priority order."""

_BIT: dict[str, int] = {name: 1 << i for i, name in enumerate(ROLES)}
_GRID_RE = re.compile(r"(\d+)\s*\*\s*(\d+)")


def role_bit(role: str) -> int:
    """The bit that stands for `role` in `TokenLayout.role_bits`.

    Raises:
        ValueError: if `role` is not one of `ROLES`, naming the valid roles.
    """
    try:
        return _BIT[role]
    except KeyError:
        raise ValueError(f"unknown role {role!r}; roles are: {', '.join(ROLES)}") from None


@dataclass(frozen=True)
class TokenSpec:
    """Which token ids play which part in a model family's prompts.

    Attributes:
        image_token_ids: ids that fill an image span (the placeholder, and for Chameleon/Emu3 the
            VQ code tokens, so that pre-tokenised images are recognised too).
        row_end_token_ids: ids of end-of-row markers inside the span (Emu3's EOL).
        image_start_token_ids: special tokens that open an image (BOI and wrappers).
        image_end_token_ids: special tokens that close an image (EOI, Emu3's EOF).
        bos_token_ids: beginning-of-sequence ids.
        header_text: token id -> text for tokens that may stand between an image-start token and
            the span (Emu3 writes the code grid as ``"H*W"``). The header is parsed to find the
            end-of-row positions when the span holds placeholders.
        tokens_per_image: fixed number of span positions per image, used to split adjacent
            placeholder runs into images (LLaVA); ``None`` when images are delimited by specials.
        placeholder_token_id: the id the processor writes for image positions, which the model
            replaces with image features (also in `image_token_ids`).
        delimited: the family always writes exactly one special token before and one after each
            image; when `image_start_token_ids`/`image_end_token_ids` are unknown (no tokenizer),
            the token before a span is taken as ``image_start`` and the gate as ``image_end``.
    """

    image_token_ids: frozenset[int]
    row_end_token_ids: frozenset[int] = frozenset()
    image_start_token_ids: frozenset[int] = frozenset()
    image_end_token_ids: frozenset[int] = frozenset()
    bos_token_ids: frozenset[int] = frozenset()
    header_text: Mapping[int, str] = field(default_factory=dict)
    tokens_per_image: int | None = None
    placeholder_token_id: int | None = None
    delimited: bool = False


@dataclass(frozen=True)
class ImageSpan:
    """One image inside one sequence: `start`..`end` are the span positions (inclusive).

    Attributes:
        start: first span position (image content or row end).
        end: last span position.
        grid: ``(rows, cols)`` of image codes when known (Emu3; LLaVA-Next's tile grid,
            the last ``rows * cols`` image tokens of the span), else ``None``.
    """

    start: int
    end: int
    grid: tuple[int, int] | None = None

    @property
    def length(self) -> int:
        """Number of positions in the span."""
        return self.end - self.start + 1


@dataclass(frozen=True)
class TokenLayout:
    """Role of every position of every sequence of a batch.

    Attributes:
        role_bits: ``[batch, pos]`` integer tensor; bit ``role_bit(r)`` is set where the position
            has role ``r``.
        image_index: ``[batch, pos]``; for image-side positions (header, span, gate, closing
            specials) the index of the image within its sequence, ``-1`` elsewhere.
        spans: per sequence, the `ImageSpan` of each image in order.
    """

    role_bits: Int[Tensor, "batch pos"]
    image_index: Int[Tensor, "batch pos"]
    spans: tuple[tuple[ImageSpan, ...], ...]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_input_ids(
        cls,
        input_ids: Int[Tensor, "*batch pos"],
        spec: TokenSpec,
        attention_mask: Int[Tensor, "*batch pos"] | None = None,
    ) -> TokenLayout:
        """Build the layout of a batch from its token ids (left or right padded).

        Args:
            input_ids: ``[batch, pos]`` (a 1-D tensor is taken as one sequence).
            spec: the family's `TokenSpec` (``model.adapter.token_spec``).
            attention_mask: ``[batch, pos]``, 0 at padding; all ones when omitted.

        Returns:
            The `TokenLayout`.

        Raises:
            ValueError: if the shapes of `input_ids` and `attention_mask` differ.

        Example:
            >>> spec = TokenSpec(image_token_ids=frozenset({9}), tokens_per_image=2)
            >>> TokenLayout.from_input_ids(torch.tensor([[5, 9, 9, 9, 9, 6]]), spec).n_images
            [2]
        """
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.ndim == 1:
            attention_mask = attention_mask[None]
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                f"{tuple(input_ids.shape)}; pass the mask that the processor returned with the ids"
            )
        ids_rows = input_ids.detach().cpu().tolist()
        mask_rows = attention_mask.detach().cpu().tolist()
        bits = torch.zeros(input_ids.shape, dtype=torch.int32)
        index = torch.full(input_ids.shape, -1, dtype=torch.int32)
        spans = []
        for b, (ids, mask) in enumerate(zip(ids_rows, mask_rows, strict=True)):
            row_bits, row_index, row_spans = _layout_row(ids, mask, spec)
            bits[b] = torch.tensor(row_bits, dtype=torch.int32)
            index[b] = torch.tensor(row_index, dtype=torch.int32)
            spans.append(tuple(row_spans))
        return cls(role_bits=bits, image_index=index, spans=tuple(spans))

    # ------------------------------------------------------------------ queries
    @property
    def shape(self) -> tuple[int, int]:
        """``(batch, pos)``."""
        return (int(self.role_bits.shape[0]), int(self.role_bits.shape[1]))

    @property
    def n_images(self) -> list[int]:
        """Number of images in each sequence."""
        return [len(s) for s in self.spans]

    def mask(
        self, role: str, *, after: str | None = None, image: int | None = None
    ) -> Bool[Tensor, "batch pos"]:
        """Bool mask ``[batch, pos]`` of the positions that have `role`.

        Args:
            role: one of `ROLES`.
            after: keep only positions strictly after the last position with this role in the
                same sequence; ``mask("text", after="image")`` is the text that follows the image.
            image: keep only positions that belong to this image (index within the sequence).

        Example:
            >>> spec = TokenSpec(image_token_ids=frozenset({9}))
            >>> TokenLayout.from_input_ids(torch.tensor([[5, 9, 6, 7]]), spec).mask("gate")
            tensor([[False, False,  True, False]])
        """
        out = (self.role_bits & role_bit(role)) != 0
        if after is not None:
            ref = (self.role_bits & role_bit(after)) != 0
            pos = torch.arange(out.shape[1])
            last = torch.where(ref, pos, torch.full_like(pos, -1)).max(dim=1).values
            out = out & (pos[None, :] > last[:, None]) & (last[:, None] >= 0)
        if image is not None:
            out = out & (self.image_index == image)
        return out

    def positions(
        self, role: str, *, after: str | None = None, image: int | None = None
    ) -> list[Int[Tensor, " n"]]:
        """Indices of the positions with `role`, one tensor per sequence (see `mask`)."""
        m = self.mask(role, after=after, image=image)
        return [row.nonzero().flatten() for row in m]

    def roles_at(self, batch_index: int, position: int) -> tuple[str, ...]:
        """All roles of one position, in `ROLES` order."""
        value = int(self.role_bits[batch_index, position])
        return tuple(r for r in ROLES if value & _BIT[r])

    def primary_roles(self, batch_index: int = 0) -> list[str]:
        """One role per position of a sequence (the first of `ROLES` order, ``gate`` before
        ``text``/``image_end``), for display."""
        order: tuple[str, ...] = ("pad", "gate", "bos", "image_start", "image", "image_row_end")
        order += ("image_end", "text", "last")
        out = []
        for value in self.role_bits[batch_index].tolist():
            out.append(next((r for r in order if value & _BIT[r]), "text"))
        return out

    def counts(self) -> dict[str, list[int]]:
        """Number of positions per role, per sequence."""
        return {r: self.mask(r).sum(dim=1).tolist() for r in ROLES}

    def select(self, batch_indices: Sequence[int]) -> TokenLayout:
        """The layout of a sub-batch."""
        idx = torch.as_tensor(list(batch_indices), dtype=torch.long)
        return TokenLayout(
            role_bits=self.role_bits[idx],
            image_index=self.image_index[idx],
            spans=tuple(self.spans[i] for i in batch_indices),
        )

    def extend(self, n_new: int) -> TokenLayout:
        """The layout with `n_new` generated positions appended to every sequence.

        Generated tokens are text: they get the ``text`` role (``last`` stays on the prompt's
        last token). Interventions use this to know which roles cover tokens made by
        ``generate``.

        Example:
            >>> spec = TokenSpec(image_token_ids=frozenset({9}))
            >>> TokenLayout.from_input_ids(torch.tensor([[9, 5]]), spec).extend(2).primary_roles()
            ['image', 'gate', 'text', 'text']
        """
        if n_new < 0:
            raise ValueError(f"n_new must be >= 0, got {n_new}")
        if n_new == 0:
            return self
        batch = self.role_bits.shape[0]
        new_bits = torch.full((batch, n_new), _BIT["text"], dtype=self.role_bits.dtype)
        new_index = torch.full((batch, n_new), -1, dtype=self.image_index.dtype)
        return TokenLayout(
            role_bits=torch.cat([self.role_bits, new_bits], dim=1),
            image_index=torch.cat([self.image_index, new_index], dim=1),
            spans=self.spans,
        )

    def with_images(
        self, images: Sequence[Sequence[tuple[int, Sequence[int], tuple[int, int] | None]]]
    ) -> TokenLayout:
        """The layout with each span cut into images of known lengths and their row ends set.

        For families whose image lengths and row ends follow from the image inputs, not the
        ids (LLaVA-Next's ``image_newline`` positions hold the placeholder id; adjacent images
        of different sizes form one placeholder run). Positions before a cut span keep its
        first image's index, positions after it (the gate) its last one's.

        Args:
            images: per sequence, ``(length, row_end_offsets, grid)`` of each image in order;
                the offsets count from the image's first position; `grid` (or ``None``) is
                the ``(rows, cols)`` of the image tokens that end the span (LLaVA-Next's tile
                grid, after the base crop), the span's `ImageSpan.grid`.

        Returns:
            The refined layout.

        Raises:
            ValueError: if the lengths do not tile the sequence's spans exactly.

        Example:
            >>> spec = TokenSpec(image_token_ids=frozenset({9}))
            >>> layout = TokenLayout.from_input_ids(torch.tensor([[5, 9, 9, 9, 9, 9, 6]]), spec)
            >>> refined = layout.with_images([[(2, [1], None), (3, [2], (1, 2))]])
            >>> refined.n_images, refined.primary_roles()[1:6]
            ([2], ['image', 'image_row_end', 'image', 'image', 'image_row_end'])
        """
        bits = self.role_bits.clone()
        index = self.image_index.clone()
        all_spans = []
        for b, row in enumerate(images):
            todo, spans = list(row), list[ImageSpan]()
            new_of: dict[int, tuple[int, int, int]] = {}  # old index -> (first, last, start)
            for k, span in enumerate(self.spans[b]):
                first, start = len(spans), span.start
                while start <= span.end:
                    if not todo:
                        raise ValueError(f"sequence {b}: image span {span} holds more positions")
                    length, row_ends, grid = todo.pop(0)
                    if start + length - 1 > span.end:
                        raise ValueError(f"sequence {b}: an image of {length} overruns {span}")
                    spans.append(ImageSpan(start, start + length - 1, grid))
                    index[b, start : start + length] = len(spans) - 1
                    for offset in row_ends:
                        bits[b, start + offset] = _BIT["image_row_end"]
                    start += length
                new_of[k] = (first, len(spans) - 1, span.start)
            if todo:
                raise ValueError(f"sequence {b}: {len(todo)} image(s) left without a span")
            for p, k in enumerate(self.image_index[b].tolist()):
                if k >= 0 and not any(s.start <= p <= s.end for s in spans):
                    first, last, start = new_of[k]
                    index[b, p] = first if p < start else last
            all_spans.append(tuple(spans))
        return TokenLayout(role_bits=bits, image_index=index, spans=tuple(all_spans))

    def summary(self, batch_index: int = 0) -> str:
        """A one-line-per-region description of one sequence, e.g. for printing in a notebook."""
        roles = self.primary_roles(batch_index)
        parts: list[str] = []
        start = 0
        for i in range(1, len(roles) + 1):
            if i == len(roles) or roles[i] != roles[start]:
                n = i - start
                label = roles[start] if n == 1 else f"{roles[start]} x{n}"
                parts.append(f"[{start}:{i}] {label}")
                start = i
        return "\n".join(parts)


# ---------------------------------------------------------------------- row construction
def _layout_row(
    ids: list[int], mask: list[int], spec: TokenSpec
) -> tuple[list[int], list[int], list[ImageSpan]]:
    n = len(ids)
    bits = [0] * n
    index = [-1] * n
    real = [bool(m) for m in mask]
    for i in range(n):
        if not real[i]:
            bits[i] = _BIT["pad"]
    in_span = [
        real[i] and (ids[i] in spec.image_token_ids or ids[i] in spec.row_end_token_ids)
        for i in range(n)
    ]
    spans = _find_spans(ids, in_span, real, spec)
    for k, span in enumerate(spans):
        _mark_span(ids, bits, index, real, span, k, spec)
    first_real = next((i for i in range(n) if real[i]), None)
    if first_real is not None and ids[first_real] in spec.bos_token_ids and bits[first_real] == 0:
        bits[first_real] = _BIT["bos"]
    for i in range(n):
        if real[i] and (bits[i] == 0 or bits[i] == _BIT["gate"]):
            bits[i] |= _BIT["text"]
    last_real = next((i for i in range(n - 1, -1, -1) if real[i]), None)
    if last_real is not None:
        bits[last_real] |= _BIT["last"]
    return bits, index, spans


def _find_spans(
    ids: list[int], in_span: list[bool], real: list[bool], spec: TokenSpec
) -> list[ImageSpan]:
    runs: list[tuple[int, int]] = []
    i, n = 0, len(ids)
    while i < n:
        if not in_span[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and in_span[j + 1]:
            j += 1
        runs.append((i, j))
        i = j + 1
    spans: list[ImageSpan] = []
    for start, end in runs:
        grid = _parse_header_grid(ids, start, real, spec)
        per_image = spec.tokens_per_image
        if grid is not None:
            per_image = grid[0] * (grid[1] + 1)
        length = end - start + 1
        if per_image and length > per_image and length % per_image == 0:
            for s in range(start, end + 1, per_image):
                spans.append(ImageSpan(s, s + per_image - 1, grid))
        else:
            spans.append(ImageSpan(start, end, grid))
    return spans


def _header_start(ids: list[int], start: int, real: list[bool], spec: TokenSpec) -> int:
    """First position of the image header (BOI specials and size text) before a span.

    The header reaches back to the earliest image-start token in the unbroken run of
    image-start/header tokens before `start`; returns `start` when there is none.
    """
    p, earliest = start - 1, start
    while (
        p >= 0 and real[p] and (ids[p] in spec.image_start_token_ids or ids[p] in spec.header_text)
    ):
        if ids[p] in spec.image_start_token_ids:
            earliest = p
        p -= 1
    return earliest


def _parse_header_grid(
    ids: list[int], start: int, real: list[bool], spec: TokenSpec
) -> tuple[int, int] | None:
    if not spec.header_text:
        return None
    first = _header_start(ids, start, real, spec)
    text = "".join(spec.header_text.get(t, " ") for t in ids[first:start])
    match = _GRID_RE.search(text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def _mark_span(
    ids: list[int],
    bits: list[int],
    index: list[int],
    real: list[bool],
    span: ImageSpan,
    k: int,
    spec: TokenSpec,
) -> None:
    for p in range(span.start, span.end + 1):
        is_row_end = ids[p] in spec.row_end_token_ids
        if span.grid is not None and span.length == span.grid[0] * (span.grid[1] + 1):
            is_row_end = is_row_end or (p - span.start) % (span.grid[1] + 1) == span.grid[1]
        bits[p] = _BIT["image_row_end"] if is_row_end else _BIT["image"]
        index[p] = k
    # header: image-start specials and header text just before the span
    header_start = _header_start(ids, span.start, real, spec)
    if (
        spec.delimited
        and not spec.image_start_token_ids
        and span.start > 0
        and real[span.start - 1]
    ):
        header_start = span.start - 1
    for p in range(header_start, span.start):
        if bits[p] == 0:
            bits[p] = _BIT["image_start"]
            index[p] = k
    # gate: the single real token right after the span; closing specials after it
    p = span.end + 1
    if p < len(ids) and real[p] and bits[p] == 0:
        bits[p] = _BIT["gate"]
        index[p] = k
    if spec.delimited and not spec.image_end_token_ids and bits[p : p + 1] == [_BIT["gate"]]:
        bits[p] |= _BIT["image_end"]
    while p < len(ids) and real[p] and ids[p] in spec.image_end_token_ids:
        bits[p] |= _BIT["image_end"]
        index[p] = k
        p += 1

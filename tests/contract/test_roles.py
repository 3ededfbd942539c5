"""Token roles of every registered variant against a brute-force reference.

`reference_roles` re-derives the roles of each position, slowly and naively, from the
tokenizer's own special-token strings and the variant's registered `ImageFrame` (what its
processor writes around each image), asserting that those tokens are really there. It never
reads the adapter's `TokenSpec`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from tests.conftest import Wrapped
from tests.contract._scenarios import SCENARIOS, UNPADDED, frame_of, make_batch, per_image
from vlm_lens import HookedVLM
from vlm_lens.batch import Batch
from vlm_lens.errors import VLMInputError
from vlm_lens.testing import GRID_TEXT, ImageFrame


def image_sizes_per_row(batch: Batch) -> list[list[tuple[int, int]]]:
    """The ``(H, W)`` of each image of each sequence, from the pixel values' shapes."""
    sizes = batch.inputs.get("image_sizes")
    if sizes is not None:
        flat = [(int(h), int(w)) for h, w in sizes.tolist()]
    else:
        pixels = batch.inputs["pixel_values"]
        flat = [tuple(pixels.shape[-2:])] * pixels.shape[0]
    out, k = [], 0
    for n in batch.images_per_sequence:
        out.append(flat[k : k + n])
        k += n
    return out


Rows = list[list[tuple[int, list[int]]]]


def newline_images(w: Wrapped, batch: Batch) -> Rows:
    """Per sequence, ``(length, row-end offsets)`` of each image of a `newline_rows` frame,
    read from the HF model's own image features: the rows equal to its ``image_newline``."""
    hf = w.reference.model
    params = inspect.signature(hf.get_image_features).parameters
    kwargs = {k: v for k, v in batch.inputs.items() if k in params}
    with torch.no_grad():
        features = hf.get_image_features(**kwargs).pooler_output
    newline = hf.image_newline
    flat = [
        (len(f), [i for i in range(len(f)) if torch.equal(f[i], newline.to(f.dtype))])
        for f in features
    ]
    out, k = [], 0
    for n in batch.images_per_sequence:
        out.append(flat[k : k + n])
        k += n
    return out


def placeholder_runs(ids: Sequence[int], mask: Sequence[int], placeholder: int) -> list[range]:
    """Maximal runs of real positions holding the placeholder id."""
    runs: list[range] = []
    start = None
    for p in range(len(ids) + 1):
        inside = p < len(ids) and bool(mask[p]) and ids[p] == placeholder
        if inside and start is None:
            start = p
        elif not inside and start is not None:
            runs.append(range(start, p))
            start = None
    return runs


def image_runs(w: Wrapped, ids: Sequence[int], mask: Sequence[int]) -> list[range]:
    """Placeholder runs, where the frame has a `row_end` token joined across each single
    `row_end` between two runs (one run per image: rows and the row ends between them)."""
    tok, frame = w.tiny.tokenizer, frame_of(w)
    runs = placeholder_runs(ids, mask, tok.image_token_id)
    if frame.row_end is None:
        return runs
    row_end = tok.convert_tokens_to_ids(frame.row_end)
    joined: list[range] = []
    for run in runs:
        last = joined[-1] if joined else None
        if last is not None and run.start == last.stop + 1 and ids[last.stop] == row_end:
            joined[-1] = range(last.start, run.stop)
        else:
            joined.append(run)
    return joined


def grid(frame: ImageFrame, size: tuple[int, int]) -> tuple[int, int]:
    assert frame.grid_factor is not None
    return size[0] // frame.grid_factor, size[1] // frame.grid_factor


def reference_roles(
    w: Wrapped,
    ids: Sequence[int],
    mask: Sequence[int],
    sizes: Sequence[tuple[int, int]],
    newline: Sequence[tuple[int, list[int]]] = (),
) -> tuple[list[set[str]], list[int]]:
    """Roles and image index of one sequence, re-derived from the tokenizer's special tokens.

    Slow and deliberately naive: it walks each placeholder run and labels what the variant's
    `ImageFrame` says its processor puts around it, asserting that those tokens are really
    there. `newline`: the images of a `newline_rows` frame (`newline_images`).
    """
    tok, frame = w.tiny.tokenizer, frame_of(w)
    n = len(ids)
    roles: list[set[str]] = [set() if mask[p] else {"pad"} for p in range(n)]
    index = [-1] * n
    images: list[range] = []
    todo = list(newline)
    for run in image_runs(w, ids, mask):
        if frame.newline_rows:  # cut by the lengths of the HF model's image features
            start = run.start
            while start < run.stop:
                length = todo.pop(0)[0]
                images.append(range(start, start + length))
                start += length
            assert start == run.stop
        elif not frame.closing:  # no delimiters: a run holds len(run) / per_image images
            each = per_image(w)
            assert len(run) % each == 0
            images += [range(a, a + each) for a in range(run.start, run.stop, each)]
        else:
            images.append(run)

    def label(p: int, k: int, *names: str) -> None:
        roles[p].update(names)
        index[p] = k

    for k, span in enumerate(images):
        if frame.grid_factor is not None:
            rows, cols = grid(frame, sizes[k])
            # a row_end frame closes the last row with its first closing token, after the span
            assert len(span) == rows * (cols + 1) - (frame.row_end is not None)
            for j, p in enumerate(span):
                row_end = (j + 1) % (cols + 1) == 0
                if frame.row_end is not None:
                    is_marker = ids[p] == tok.convert_tokens_to_ids(frame.row_end)
                    assert is_marker == row_end, (p, ids[p])
                label(p, k, "image_row_end" if row_end else "image")
        elif frame.newline_rows:
            for j, p in enumerate(span):
                label(p, k, "image_row_end" if j in newline[k][1] else "image")
        else:
            for p in span:
                label(p, k, "image")
        # opening tokens, walked backwards from the span
        p = span.start - 1
        for i in reversed(range(len(frame.opening))):
            token = frame.opening[i]
            if token == GRID_TEXT:
                before = tok.convert_tokens_to_ids(frame.opening[i - 1])
                q = p
                while ids[q] != before:
                    q -= 1
                assert tok.decode(ids[q + 1 : p + 1]) == "{}*{}".format(*grid(frame, sizes[k]))
                for r in range(q + 1, p + 1):
                    label(r, k, "image_start")
                p = q
            else:
                assert ids[p] == tok.convert_tokens_to_ids(token), (token, p)
                label(p, k, "image_start")
                p -= 1
        # the gate and closing tokens
        gate = span.stop
        if gate >= n or not mask[gate] or ids[gate] == tok.image_token_id:
            continue  # an image followed by another image, or a cut sequence
        if frame.closing:
            for j, token in enumerate(frame.closing):
                assert ids[gate + j] == tok.convert_tokens_to_ids(token), token
                label(gate + j, k, *(("gate", "image_end") if j == 0 else ("image_end",)))
        else:
            label(gate, k, "gate", "text")
    real = [p for p in range(n) if mask[p]]
    if ids[real[0]] == tok.bos_token_id and not roles[real[0]]:
        roles[real[0]].add("bos")
    for p in real:
        if not roles[p]:
            roles[p].add("text")
    roles[real[-1]].add("last")
    return roles, index


def rows_of(batch: Batch) -> list[tuple[list[int], list[int]]]:
    mask = batch.attention_mask
    if mask is None:
        mask = torch.ones_like(batch.input_ids)
    return list(zip(batch.input_ids.tolist(), mask.tolist(), strict=True))


def assert_roles(layout: Any, row: int, roles: Sequence[set[str]], index: Sequence[int]) -> None:
    """Every position of `row` has exactly `roles` and `index`."""
    assert layout.shape[1] == len(roles)
    got = [set(layout.roles_at(row, p)) for p in range(len(roles))]
    assert got == list(roles)
    assert layout.image_index[row].tolist() == list(index)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_layout_matches_reference(variant: Wrapped, scenario: str) -> None:
    batch = make_batch(variant, scenario)
    layout = batch.layout
    sizes = image_sizes_per_row(batch)
    newline = newline_images(variant, batch) if frame_of(variant).newline_rows else None
    for b, (ids, mask) in enumerate(rows_of(batch)):
        roles, index = reference_roles(variant, ids, mask, sizes[b], newline[b] if newline else ())
        assert_roles(layout, b, roles, index)
        assert layout.n_images[b] == batch.images_per_sequence[b]
    if scenario.startswith("padded"):
        side = scenario.split("-")[1]
        mask = batch.attention_mask
        assert mask is not None and not bool(mask.all())
        edge = mask[:, 0] if side == "left" else mask[:, -1]
        assert not bool(edge.all())  # the processor padded on the requested side


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_family_invariants(variant: Wrapped, scenario: str) -> None:
    """The frame's facts, checked one by one from ids, mask and image sizes."""
    batch = make_batch(variant, scenario)
    layout, tok, frame = batch.layout, variant.tiny.tokenizer, frame_of(variant)
    sizes = image_sizes_per_row(batch)
    newline = newline_images(variant, batch) if frame.newline_rows else None
    for b, (ids, mask) in enumerate(rows_of(batch)):
        runs = image_runs(variant, ids, mask)
        placeholder_pos = [p for r in runs for p in r]
        row_ends: list[int] = []
        if newline is not None:  # images back to back in their runs, row ends from HF
            start = iter([p for r in runs for p in r])
            for length, ends in newline[b]:
                image_positions = [next(start) for _ in range(length)]
                row_ends += [image_positions[o] for o in ends]
            assert next(start, None) is None
        if frame.grid_factor is not None:
            assert len(runs) == len(sizes[b])
            for run, size in zip(runs, sizes[b], strict=True):
                cols = grid(frame, size)[1]
                row_ends += list(run)[cols :: cols + 1]  # every (cols+1)th position of the span
        if frame.row_end is not None:  # the row ends are the row_end tokens, and only those
            marker = tok.convert_tokens_to_ids(frame.row_end)
            assert row_ends == [p for p in placeholder_pos if ids[p] == marker]
        image = sorted(set(placeholder_pos) - set(row_ends))
        assert layout.positions("image")[b].tolist() == image
        assert layout.positions("image_row_end")[b].tolist() == row_ends
        # the gate is the first position after each contiguous placeholder run
        gates = [r.stop for r in runs if r.stop < len(ids) and mask[r.stop]]
        assert layout.positions("gate")[b].tolist() == gates
        for g in gates:
            if frame.closing:
                for j, token in enumerate(frame.closing):
                    assert ids[g + j] == tok.convert_tokens_to_ids(token)
                    expected = ("gate", "image_end") if j == 0 else ("image_end",)
                    assert layout.roles_at(b, g + j) == expected
            else:
                assert set(layout.roles_at(b, g)) >= {"gate", "text"}
        # padding, BOS and the last real token
        assert layout.mask("pad")[b].tolist() == [m == 0 for m in mask]
        real = [p for p in range(len(ids)) if mask[p]]
        first_real, last_real = real[0], real[-1]
        if tok.bos_token_id is None:  # Qwen2-style tokenizers (InternVL) write no BOS
            assert layout.positions("bos")[b].tolist() == []
        else:
            assert ids[first_real] == tok.bos_token_id
            assert layout.positions("bos")[b].tolist() == [first_real]
        assert layout.positions("last")[b].tolist() == [last_real]
        # image_index counts images in order of appearance
        image_side = layout.image_index[b][layout.image_index[b] >= 0].tolist()
        seen = list(dict.fromkeys(image_side))
        assert seen == list(range(batch.images_per_sequence[b]))
        assert image_side == sorted(image_side)
        for k in range(batch.images_per_sequence[b]):
            n_img = len(layout.positions("image", image=k)[b]) + len(
                layout.positions("image_row_end", image=k)[b]
            )
            assert n_img == layout.spans[b][k].length


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_layout_from_ids_equals_batch_layout(variant: Wrapped, scenario: str) -> None:
    """Ids alone give the batch's layout, or, for a family whose roles need the image inputs
    (`layout_needs_image_inputs`: LLaVA-Next's row ends), a clear refusal, and ids with the
    image inputs give it."""
    batch = make_batch(variant, scenario)
    if variant.model.adapter.layout_needs_image_inputs:
        with pytest.raises(VLMInputError, match="image_inputs"):
            variant.model.layout(batch.input_ids, batch.attention_mask)
        from_inputs = variant.model.layout(
            batch.input_ids, batch.attention_mask, image_inputs=batch.inputs
        )
        assert torch.equal(from_inputs.role_bits, batch.layout.role_bits)
        assert torch.equal(from_inputs.image_index, batch.layout.image_index)
        assert from_inputs.spans == batch.layout.spans
        return
    from_ids = variant.model.layout(batch.input_ids, batch.attention_mask)
    assert torch.equal(from_ids.role_bits, batch.layout.role_bits)
    assert torch.equal(from_ids.image_index, batch.layout.image_index)
    assert from_ids.spans == batch.layout.spans
    if scenario in UNPADDED:
        alone = variant.model.layout(batch.input_ids)
        assert torch.equal(alone.role_bits, batch.layout.role_bits)
        assert torch.equal(alone.image_index, batch.layout.image_index)
        assert alone.spans == batch.layout.spans


@pytest.mark.parametrize("scenario", ["one", "padded-left", "two-images"])
def test_layout_without_processor_equals_layout_with_processor(
    variant: Wrapped, scenario: str
) -> None:
    """`HookedVLM.from_hf(model)` without a processor is the documented way to work from token
    ids alone (`batch_from_inputs`); the roles it finds must be the same."""
    batch = make_batch(variant, scenario)
    bare = HookedVLM.from_hf(variant.reference)
    assert bare.processor is None
    layout = bare.batch_from_inputs(batch.inputs).layout
    assert [layout.primary_roles(b) for b in range(len(batch))] == [
        batch.layout.primary_roles(b) for b in range(len(batch))
    ]
    assert torch.equal(layout.role_bits, batch.layout.role_bits)
    assert torch.equal(layout.image_index, batch.layout.image_index)

"""Position selectors against masks written out by hand on a layout with padding and two images."""

from __future__ import annotations

import pytest
import torch

from vlm_lens.layout import TokenLayout, TokenSpec
from vlm_lens.positions import (
    after,
    covers_generated,
    describe,
    image_token,
    random_image_tokens,
    select,
)

SPEC = TokenSpec(
    image_token_ids=frozenset({9}),
    image_start_token_ids=frozenset({7}),
    image_end_token_ids=frozenset({8}),
    bos_token_ids=frozenset({1}),
)
# seq 0: bos, text, [7 9 9 9 8], text, [7 9 9 9 8], text, text
# seq 1: pad, pad, bos, [7 9 9 9 8], text, text, text, text, text, text  (left padded)
IDS = torch.tensor(
    [
        [1, 5, 7, 9, 9, 9, 8, 5, 7, 9, 9, 9, 8, 5, 6],
        [0, 0, 1, 7, 9, 9, 9, 8, 5, 6, 5, 6, 5, 6, 5],
    ]
)
MASK = torch.tensor([[1] * 15, [0, 0] + [1] * 13])
LAYOUT = TokenLayout.from_input_ids(IDS, SPEC, MASK)


def _positions(mask: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in mask]


def test_roles_lists_all_and_explicit_positions() -> None:
    assert _positions(select("gate", LAYOUT)) == [[6, 12], [7]]
    assert _positions(select(["bos", "gate"], LAYOUT)) == [[0, 6, 12], [2, 7]]
    assert _positions(select("all", LAYOUT)) == [list(range(15)), list(range(2, 15))]
    assert _positions(select([0, 3], LAYOUT)) == [[0, 3], [3]]  # padding is never selected
    bool_mask = torch.zeros(15, dtype=torch.bool)
    bool_mask[[1, 14]] = True
    assert _positions(select(bool_mask, LAYOUT)) == [[1, 14], [14]]


def test_callables() -> None:
    assert _positions(select(after("text", "gate"), LAYOUT)) == [[13, 14], list(range(8, 15))]
    assert _positions(select(after("all", "image"), LAYOUT)) == [
        list(range(12, 15)),
        list(range(7, 15)),
    ]
    assert _positions(select(image_token(0), LAYOUT)) == [[3, 9], [4]]
    assert _positions(select(image_token(-1), LAYOUT)) == [[5, 11], [6]]
    assert _positions(select(image_token(5), LAYOUT)) == [[], []]


def test_random_image_tokens_are_seeded_per_sequence_and_per_image() -> None:
    a = select(random_image_tokens(2, seed=[3, 4]), LAYOUT)
    b = select(random_image_tokens(2, seed=[3, 4]), LAYOUT)
    assert torch.equal(a, b)
    image = LAYOUT.mask("image")
    assert not (a & ~image).any()
    counts = [[int((a[0] & (LAYOUT.image_index[0] == k)).sum()) for k in (0, 1)], int(a[1].sum())]
    assert counts == [[2, 2], 2]
    one_alone = select(random_image_tokens(2, seed=[4]), LAYOUT.select([1]))
    assert torch.equal(one_alone[0], a[1])  # a sequence's draw does not depend on the batch
    draws = {
        tuple(select(random_image_tokens(1, seed=s), LAYOUT)[1].nonzero().flatten().tolist())
        for s in range(20)
    }
    assert len(draws) == 3


def test_generated_tokens_are_text() -> None:
    assert covers_generated("all", LAYOUT).tolist() == [True, True]
    assert covers_generated(after("text", "gate"), LAYOUT).tolist() == [True, True]
    assert covers_generated("gate", LAYOUT).tolist() == [False, False]
    assert covers_generated([3, 4], LAYOUT).tolist() == [False, False]
    assert LAYOUT.extend(2).shape == (2, 17)


def test_errors_and_labels() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        select("eoi", LAYOUT)
    with pytest.raises(ValueError, match="positions must be ints"):
        select([20], LAYOUT)
    with pytest.raises(ValueError, match="shape"):
        select(torch.zeros(2, 3, dtype=torch.bool), LAYOUT)
    with pytest.raises(ValueError, match="seeds"):
        select(random_image_tokens(1, seed=[1, 2, 3]), LAYOUT)
    assert describe(["bos", "gate"]) == "bos+gate"
    assert describe(after("text", "gate")) == "text_after_gate"

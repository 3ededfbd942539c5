"""Tests of `TokenLayout`: the role of every position of a VLM prompt.

Two kinds of checks, each against an independent computation:

* hand-built `TokenSpec` + token ids, where every expected role is attached to the ids as the
  test builds them (`Seq`), so nothing is copied from layout.py's algorithm;
* the VQ families (Chameleon, Emu3): ids with the image codes in place of the placeholders give
  the same roles. Every registered family's roles against a brute-force reference are part of
  the family contract (tests/contract/test_roles.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import torch

from tests.conftest import Wrapped, wrap_variant
from tests.contract._scenarios import SCENARIOS, make_batch
from vlm_lens import ROLES, ImageSpan, TokenLayout, TokenSpec
from vlm_lens.batch import Batch
from vlm_lens.layout import role_bit
from vlm_lens.testing import tiny_variants

# ================================================================================================
# Hand-built specs
# ================================================================================================

PAD, BOS, BOI, EOI, IMG = 0, 1, 7, 8, 9
TXT = (20, 21, 22, 23, 24, 25)

CHAMELEON_LIKE = TokenSpec(
    image_token_ids=frozenset({IMG}),
    image_start_token_ids=frozenset({BOI}),
    image_end_token_ids=frozenset({EOI}),
    bos_token_ids=frozenset({BOS}),
    placeholder_token_id=IMG,
)
LLAVA_LIKE = TokenSpec(
    image_token_ids=frozenset({IMG}),
    bos_token_ids=frozenset({BOS}),
    tokens_per_image=3,
    placeholder_token_id=IMG,
)

# Emu3-like: "<|image start|>" "H" "*" "W" "<|image token|>" span "<eof>" "<|image end|>"
E_BOI, E_WRAP, E_EOF, E_EOI, E_EOL, E_PH = 30, 31, 32, 33, 34, 35
E_CODES = tuple(range(60, 76))
E_CHAR_IDS = {c: 40 + i for i, c in enumerate("0123456789*")}
EMU3_LIKE = TokenSpec(
    image_token_ids=frozenset({E_PH, *E_CODES}),
    row_end_token_ids=frozenset({E_EOL}),
    image_start_token_ids=frozenset({E_BOI, E_WRAP}),
    image_end_token_ids=frozenset({E_EOF, E_EOI}),
    bos_token_ids=frozenset({BOS}),
    header_text={i: c for c, i in E_CHAR_IDS.items()},
    placeholder_token_id=E_PH,
)


@dataclass
class Seq:
    """Token ids built part by part, each part with the roles and image index it must get."""

    ids: list[int] = field(default_factory=list)
    roles: list[set[str]] = field(default_factory=list)
    image: list[int] = field(default_factory=list)

    def add(self, ids: Sequence[int], *roles: str, image: int = -1) -> range:
        """Append `ids`, all with `roles` and `image`; return their positions."""
        start = len(self.ids)
        self.ids += list(ids)
        self.roles += [set(roles) for _ in ids]
        self.image += [image] * len(ids)
        return range(start, len(self.ids))

    def expected(self) -> list[set[str]]:
        """The roles, with ``last`` on the final token."""
        out = [set(r) for r in self.roles]
        out[-1].add("last")
        return out

    def positions(self, role: str) -> list[int]:
        return [p for p, r in enumerate(self.expected()) if role in r]


def padded(
    seq: Seq, n_pad: int, side: str, pad_id: int = PAD
) -> tuple[list[int], list[int], list[set[str]], list[int]]:
    """`seq` padded by `n_pad` tokens on `side`: ids, mask, expected roles, expected index."""
    pad_ids, pad_mask = [pad_id] * n_pad, [0] * n_pad
    pad_roles, pad_index = [{"pad"} for _ in range(n_pad)], [-1] * n_pad
    mask = [1] * len(seq.ids)
    if side == "left":
        return (
            pad_ids + seq.ids,
            pad_mask + mask,
            pad_roles + seq.expected(),
            pad_index + seq.image,
        )
    return seq.ids + pad_ids, mask + pad_mask, seq.expected() + pad_roles, seq.image + pad_index


def assert_roles(
    layout: TokenLayout, row: int, roles: Sequence[set[str]], index: Sequence[int]
) -> None:
    """Every position of `row` has exactly `roles` and `index`."""
    assert layout.shape[1] == len(roles)
    got = [set(layout.roles_at(row, p)) for p in range(len(roles))]
    assert got == list(roles)
    assert layout.image_index[row].tolist() == list(index)


def chameleon_like_seq(n_images: int = 1, span: int = 4) -> Seq:
    """``BOS t t [BOI IMG*span EOI t]*n_images t``."""
    s = Seq()
    s.add([BOS], "bos")
    s.add(TXT[:2], "text")
    for k in range(n_images):
        s.add([BOI], "image_start", image=k)
        s.add([IMG] * span, "image", image=k)
        s.add([EOI], "gate", "image_end", image=k)
        s.add([TXT[2 + k % 3]], "text")
    s.add([TXT[5]], "text")
    return s


# ------------------------------------------------------------------------------------------------
# roles of one sequence
# ------------------------------------------------------------------------------------------------


def test_single_image_roles() -> None:
    s = chameleon_like_seq(n_images=1, span=5)
    layout = TokenLayout.from_input_ids(torch.tensor([s.ids]), CHAMELEON_LIKE)
    assert_roles(layout, 0, s.expected(), s.image)
    image = s.positions("image")
    assert layout.spans == ((ImageSpan(image[0], image[-1]),),)
    assert layout.spans[0][0].length == len(image)
    assert layout.n_images == [1]
    assert layout.shape == (1, len(s.ids))
    counts = layout.counts()
    for role in ROLES:
        assert counts[role] == [len(s.positions(role))], role


def test_gate_without_end_token_is_also_text() -> None:
    s = Seq()
    s.add([BOS], "bos")
    s.add(TXT[:2], "text")
    s.add([IMG] * 3, "image", image=0)
    s.add([TXT[3]], "gate", "text", image=0)
    s.add(TXT[4:6], "text")
    layout = TokenLayout.from_input_ids(torch.tensor([s.ids]), LLAVA_LIKE)
    assert_roles(layout, 0, s.expected(), s.image)
    assert layout.roles_at(0, s.positions("gate")[0]) == ("gate", "text")


def test_image_at_the_end_has_no_gate() -> None:
    s = Seq()
    s.add([BOS], "bos")
    s.add(TXT[:2], "text")
    s.add([IMG] * 3, "image", image=0)
    layout = TokenLayout.from_input_ids(torch.tensor([s.ids]), LLAVA_LIKE)
    assert_roles(layout, 0, s.expected(), s.image)
    assert layout.positions("gate")[0].tolist() == []
    assert layout.roles_at(0, len(s.ids) - 1) == ("image", "last")


def test_bos_role_only_for_a_bos_id_in_first_position() -> None:
    s = Seq()
    s.add([TXT[0]], "text")
    s.add([BOS], "text")  # a BOS id later in the sequence is ordinary text
    s.add([TXT[1]], "text")
    layout = TokenLayout.from_input_ids(torch.tensor(s.ids), CHAMELEON_LIKE)  # 1-D ids
    assert_roles(layout, 0, s.expected(), s.image)


def test_several_images_have_their_own_index() -> None:
    n_images = 3
    s = chameleon_like_seq(n_images=n_images, span=2)
    layout = TokenLayout.from_input_ids(torch.tensor([s.ids]), CHAMELEON_LIKE)
    assert_roles(layout, 0, s.expected(), s.image)
    assert layout.n_images == [n_images]
    for k in range(n_images):
        mine = [p for p in s.positions("image") if s.image[p] == k]
        assert layout.positions("image", image=k)[0].tolist() == mine
        assert (layout.spans[0][k].start, layout.spans[0][k].end) == (mine[0], mine[-1])
        gate = [p for p in s.positions("gate") if s.image[p] == k]
        assert layout.positions("gate", image=k)[0].tolist() == gate


def test_adjacent_placeholder_runs_are_split_by_tokens_per_image() -> None:
    per = LLAVA_LIKE.tokens_per_image
    assert per is not None
    s = Seq()
    s.add([BOS], "bos")
    s.add([TXT[0]], "text")
    first = s.add([IMG] * per, "image", image=0)  # two images back to back: no gate between
    second = s.add([IMG] * per, "image", image=1)
    s.add([TXT[1]], "gate", "text", image=1)
    third = s.add([IMG] * per, "image", image=2)
    s.add([TXT[2]], "gate", "text", image=2)
    layout = TokenLayout.from_input_ids(torch.tensor([s.ids]), LLAVA_LIKE)
    assert_roles(layout, 0, s.expected(), s.image)
    assert [(sp.start, sp.end) for sp in layout.spans[0]] == [
        (r[0], r[-1]) for r in (first, second, third)
    ]


def test_run_that_is_not_a_multiple_of_tokens_per_image_stays_one_span() -> None:
    per = LLAVA_LIKE.tokens_per_image
    assert per is not None
    s = Seq()
    s.add([BOS], "bos")
    run = s.add([IMG] * (per + 1), "image", image=0)
    s.add([TXT[0]], "gate", "text", image=0)
    layout = TokenLayout.from_input_ids(torch.tensor([s.ids]), LLAVA_LIKE)
    assert_roles(layout, 0, s.expected(), s.image)
    assert layout.spans[0][0].length == len(run)


# ------------------------------------------------------------------------------------------------
# Emu3-style header and row ends
# ------------------------------------------------------------------------------------------------


def emu3_like_seq(
    grids: Sequence[tuple[int, int]], *, pretokenised: bool, prefix: Sequence[int] = ()
) -> Seq:
    """``BOS [prefix] [<boi> "H*W" <wrap> rows <eof> <eoi> t]*`` with rows of placeholders or of
    code ids + EOL."""
    s = Seq()
    s.add([BOS], "bos")
    s.add(list(prefix), "text")
    code = 0
    for k, (h, w) in enumerate(grids):
        s.add([E_BOI], "image_start", image=k)
        s.add([E_CHAR_IDS[c] for c in f"{h}*{w}"], "image_start", image=k)
        s.add([E_WRAP], "image_start", image=k)
        for _ in range(h):
            if pretokenised:
                row = [E_CODES[(code + j) % len(E_CODES)] for j in range(w)]
                code += w
                s.add(row, "image", image=k)
                s.add([E_EOL], "image_row_end", image=k)
            else:
                s.add([E_PH] * w, "image", image=k)
                s.add([E_PH], "image_row_end", image=k)
        s.add([E_EOF], "gate", "image_end", image=k)
        s.add([E_EOI], "image_end", image=k)
        s.add([TXT[k % 6]], "text")
    return s


@pytest.mark.parametrize("grid", [(2, 3), (3, 2), (1, 1), (12, 10)], ids=str)
@pytest.mark.parametrize("pretokenised", [False, True], ids=["placeholders", "codes"])
def test_emu3_header_gives_row_ends(grid: tuple[int, int], pretokenised: bool) -> None:
    s = emu3_like_seq([grid], pretokenised=pretokenised)
    layout = TokenLayout.from_input_ids(torch.tensor([s.ids]), EMU3_LIKE)
    assert_roles(layout, 0, s.expected(), s.image)
    h, w = grid
    span = layout.spans[0][0]
    assert span.grid == grid
    assert span.length == h * (w + 1)
    row_ends = layout.positions("image_row_end")[0].tolist()
    assert row_ends == [span.start + (r + 1) * (w + 1) - 1 for r in range(h)]
    assert len(layout.positions("image")[0]) == h * w


def test_emu3_placeholders_and_codes_give_the_same_roles() -> None:
    grids = [(2, 3), (4, 1)]
    spans = emu3_like_seq(grids, pretokenised=False)
    codes = emu3_like_seq(grids, pretokenised=True)
    assert spans.ids != codes.ids
    a = TokenLayout.from_input_ids(torch.tensor([spans.ids]), EMU3_LIKE)
    b = TokenLayout.from_input_ids(torch.tensor([codes.ids]), EMU3_LIKE)
    assert torch.equal(a.role_bits, b.role_bits)
    assert torch.equal(a.image_index, b.image_index)
    assert a.spans == b.spans
    assert [sp.grid for sp in a.spans[0]] == grids


def test_emu3_digits_in_the_text_before_the_image_are_not_the_header() -> None:
    # the prompt text right before the image is "5*5": it must stay text, the grid is 2*3
    prefix = [E_CHAR_IDS[c] for c in "5*5"]
    s = emu3_like_seq([(2, 3)], pretokenised=False, prefix=prefix)
    layout = TokenLayout.from_input_ids(torch.tensor([s.ids]), EMU3_LIKE)
    assert_roles(layout, 0, s.expected(), s.image)
    assert layout.spans[0][0].grid == (2, 3)


# ------------------------------------------------------------------------------------------------
# padding
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad_id", [PAD, IMG, BOS, EOI], ids=["pad", "img", "bos", "eoi"])
@pytest.mark.parametrize(
    ("spec", "seq"),
    [
        (CHAMELEON_LIKE, chameleon_like_seq(2, 3)),
        (EMU3_LIKE, emu3_like_seq([(2, 2)], pretokenised=False)),
    ],
    ids=["chameleon-like", "emu3-like"],
)
def test_left_and_right_padding_give_the_same_roles(spec: TokenSpec, seq: Seq, pad_id: int) -> None:
    """Padding is told by the mask alone, whatever id fills it (even an image or BOS id)."""
    n_pad = 4
    short = Seq(seq.ids[:-2], seq.roles[:-2], seq.image[:-2])  # a second, shorter sequence
    n_short = n_pad + 2
    layouts = {}
    for side in ("left", "right"):
        rows = [padded(seq, n_pad, side, pad_id), padded(short, n_short, side, pad_id)]
        ids = torch.tensor([r[0] for r in rows])
        mask = torch.tensor([r[1] for r in rows])
        layout = TokenLayout.from_input_ids(ids, spec, mask)
        for b, (_, m, roles, index) in enumerate(rows):
            assert_roles(layout, b, roles, index)
            assert layout.mask("pad")[b].tolist() == [not x for x in m]
        layouts[side] = layout
    left, right = layouts["left"], layouts["right"]
    for b, shift in enumerate((n_pad, n_short)):
        n = left.shape[1]
        assert torch.equal(left.role_bits[b, shift:], right.role_bits[b, : n - shift])
        assert torch.equal(left.image_index[b, shift:], right.image_index[b, : n - shift])
        assert [(sp.start - shift, sp.end - shift) for sp in left.spans[b]] == [
            (sp.start, sp.end) for sp in right.spans[b]
        ]


def test_span_cut_by_right_padding_has_no_gate() -> None:
    s = Seq()
    s.add([BOS], "bos")
    s.add([IMG] * 3, "image", image=0)
    ids, mask, roles, index = padded(s, 2, "right", pad_id=EOI)
    layout = TokenLayout.from_input_ids(torch.tensor([ids]), CHAMELEON_LIKE, torch.tensor([mask]))
    assert_roles(layout, 0, roles, index)
    assert layout.positions("gate")[0].tolist() == []


# ------------------------------------------------------------------------------------------------
# queries
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def two_rows() -> tuple[TokenLayout, list[Seq]]:
    """Row 0: two images with text between and after; row 1: text only (right padded)."""
    with_images = chameleon_like_seq(n_images=2, span=3)
    text_only = Seq()
    text_only.add([BOS], "bos")
    text_only.add(TXT[:4], "text")
    n = len(with_images.ids)
    rows = [padded(with_images, 0, "right"), padded(text_only, n - len(text_only.ids), "right")]
    ids = torch.tensor([r[0] for r in rows])
    mask = torch.tensor([r[1] for r in rows])
    return TokenLayout.from_input_ids(ids, CHAMELEON_LIKE, mask), [with_images, text_only]


def test_mask_after_role(two_rows: tuple[TokenLayout, list[Seq]]) -> None:
    layout, (seq, _) = two_rows
    last_image = max(seq.positions("image"))
    expected = [p for p in seq.positions("text") if p > last_image]
    got = layout.mask("text", after="image")
    assert got[0].nonzero().flatten().tolist() == expected
    assert not got[1].any()  # no image in row 1: nothing comes "after" it
    # "after" is after the *last* position with that role
    last_gate = max(seq.positions("gate"))
    assert layout.positions("image", after="gate")[0].tolist() == []
    got = layout.positions("text", after="gate")[0].tolist()
    assert got == [p for p in seq.positions("text") if p > last_gate]
    assert layout.positions("bos", after="text")[0].tolist() == []


def test_mask_of_one_image(two_rows: tuple[TokenLayout, list[Seq]]) -> None:
    layout, (seq, _) = two_rows
    for k in range(2):
        for role in ("image_start", "image", "gate", "image_end"):
            mine = [p for p in seq.positions(role) if seq.image[p] == k]
            assert mine
            m = layout.mask(role, image=k)
            assert m[0].nonzero().flatten().tolist() == mine
            assert not m[1].any()
    assert not layout.mask("image", image=2).any()
    # image= and after= combine: the closing tokens after the last opening one are image 1's
    last_start = max(seq.positions("image_start"))
    ends = [p for p in seq.positions("image_end") if p > last_start]
    assert ends and all(seq.image[p] == 1 for p in ends)
    assert layout.positions("image_end", after="image_start")[0].tolist() == ends
    assert layout.positions("image_end", image=1, after="image_start")[0].tolist() == ends
    assert layout.positions("image_end", image=0, after="image_start")[0].tolist() == []


def test_positions_and_counts(two_rows: tuple[TokenLayout, list[Seq]]) -> None:
    layout, seqs = two_rows
    for role in ROLES:
        pos = layout.positions(role)
        assert len(pos) == 2
        for b, seq in enumerate(seqs):
            expected = seq.positions(role)
            if role == "pad":
                expected = list(range(len(seq.ids), layout.shape[1]))
            assert pos[b].tolist() == expected, (role, b)
            assert layout.counts()[role][b] == len(expected)
    assert layout.n_images == [2, 0]


def test_select(two_rows: tuple[TokenLayout, list[Seq]]) -> None:
    layout, _ = two_rows
    one = layout.select([1])
    assert one.shape == (1, layout.shape[1])
    assert torch.equal(one.role_bits[0], layout.role_bits[1])
    assert torch.equal(one.image_index[0], layout.image_index[1])
    assert one.spans == (layout.spans[1],)
    swapped = layout.select([1, 0])
    assert torch.equal(swapped.role_bits, layout.role_bits.flip(0))
    assert torch.equal(swapped.image_index, layout.image_index.flip(0))
    assert swapped.spans == (layout.spans[1], layout.spans[0])
    assert swapped.n_images == [0, 2]


def test_roles_at_is_in_roles_order(two_rows: tuple[TokenLayout, list[Seq]]) -> None:
    layout, (seq, _) = two_rows
    for p, roles in enumerate(seq.expected()):
        assert layout.roles_at(0, p) == tuple(r for r in ROLES if r in roles)
    gate = seq.positions("gate")[0]
    assert layout.roles_at(0, gate) == ("gate", "image_end")


def test_primary_roles_and_summary(two_rows: tuple[TokenLayout, list[Seq]]) -> None:
    layout, (seq, _) = two_rows
    primary = layout.primary_roles(0)
    assert len(primary) == len(seq.ids)
    for p in seq.positions("gate"):
        assert primary[p] == "gate"
    for p in seq.positions("image"):
        assert primary[p] == "image"
    n_pad = layout.shape[1] - len(two_rows[1][1].ids)
    assert layout.summary(1).splitlines()[-1].endswith(f"pad x{n_pad}")


@pytest.mark.parametrize("role", ["images", "Image", "", "eoi"])
def test_unknown_role_raises_and_names_the_roles(
    two_rows: tuple[TokenLayout, list[Seq]], role: str
) -> None:
    layout, _ = two_rows
    calls = [
        lambda: layout.mask(role),
        lambda: layout.positions(role),
        lambda: layout.mask("text", after=role),
        lambda: role_bit(role),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="roles are") as info:
            call()
        msg = str(info.value)
        assert repr(role) in msg
        for name in ROLES:
            assert name in msg


@pytest.mark.bad_input_types
def test_shape_mismatch_between_ids_and_mask_raises() -> None:
    ids = torch.tensor([[BOS, IMG, EOI, TXT[0]]])
    with pytest.raises(ValueError, match="attention_mask") as info:
        TokenLayout.from_input_ids(ids, CHAMELEON_LIKE, torch.ones(1, 3, dtype=torch.long))
    assert str(tuple(ids.shape)) in str(info.value)
    with pytest.raises(ValueError, match="attention_mask"):
        TokenLayout.from_input_ids(ids, CHAMELEON_LIKE, torch.ones(2, 4, dtype=torch.long))


# ================================================================================================
# Families that feed images as VQ code ids (every family's roles against a brute-force reference
# are part of the family contract: tests/contract/test_roles.py)
# ================================================================================================

VQ_VARIANTS = tiny_variants(family="chameleon") + tiny_variants(family="emu3")


@pytest.fixture(scope="module", params=VQ_VARIANTS, ids=[v.name for v in VQ_VARIANTS])
def fam(request: pytest.FixtureRequest) -> Wrapped:
    return wrap_variant(request.param)


def with_image_codes(fam: Wrapped, batch: Batch) -> torch.Tensor:
    """`batch.input_ids` with each placeholder replaced by the image's VQ code ids (computed by
    the plain Hugging Face model, as its forward does)."""
    plain = fam.reference
    assert not hasattr(plain.model, "hook_image_embeds")  # un-wrapped
    pixel_values = batch.inputs["pixel_values"]
    with torch.no_grad():
        if fam.tiny.family == "emu3":
            codes = plain.model.get_image_tokens(pixel_values, batch.inputs["image_sizes"])
        else:
            codes = plain.model.get_image_tokens(pixel_values)
    ids = batch.input_ids.clone()
    where = ids == fam.tiny.tokenizer.image_token_id
    if batch.attention_mask is not None:
        where &= batch.attention_mask.bool()
    codes = codes.flatten().to(ids.dtype)
    assert int(where.sum()) == codes.numel()
    ids[where] = codes
    return ids


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_image_codes_give_the_same_roles_as_placeholders(fam: Wrapped, scenario: str) -> None:
    batch = make_batch(fam, scenario)
    ids = with_image_codes(fam, batch)
    assert not bool((ids == fam.tiny.tokenizer.image_token_id).any())
    layout = fam.model.layout(ids, batch.attention_mask)
    assert torch.equal(layout.role_bits, batch.layout.role_bits)
    assert torch.equal(layout.image_index, batch.layout.image_index)
    assert [(s.start, s.end) for row in layout.spans for s in row] == [
        (s.start, s.end) for row in batch.layout.spans for s in row
    ]
    # such a batch needs no pixel values
    inputs = {"input_ids": ids}
    if batch.attention_mask is not None:
        inputs["attention_mask"] = batch.attention_mask
    rebuilt = fam.model.batch_from_inputs(inputs)
    assert torch.equal(rebuilt.layout.role_bits, batch.layout.role_bits)
    assert rebuilt.images_per_sequence == batch.images_per_sequence

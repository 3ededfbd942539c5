"""`AttentionStructure`: which prompt positions may attend to which (causal, plus blocks).

Every supported family attends causally: a query reads the keys at or before it. Some families
add *bidirectional blocks*: Gemma 3 lets the tokens of one image read each other both ways,
PaliGemma (a prefix-LM) the whole image + prompt prefix. An `AttentionStructure` records this
per sequence as a ``[batch, pos]`` tensor of block ids, the form Hugging Face's masks take
(``block_sequence_ids`` in ``transformers.masking_utils``): positions that share an id ``>= 0``
see each other, ``-1`` marks positions in no block. So query ``q`` sees key ``k`` when
``k <= q`` or ``block[q] == block[k] >= 0``. Padding and sliding windows are not part of the
structure; whoever applies it ANDs them on top, as Hugging Face does.

The family adapter builds it (`VLMAdapter.attention_structure`); a `Batch` carries it, and the
code that reasons about visibility uses it: knockout earliest positions, attention rows, the
prefix-reuse check. Pure torch.

Example:
    >>> s = AttentionStructure.from_spans(1, 6, [[(1, 4)]])  # positions 1..3 see each other
    >>> s.mask()[0].int().tolist()
    [[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    >>> s.earliest_affected(torch.tensor([3])).tolist()  # a change at 3 reaches back to 1
    [1]
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor


@dataclass(frozen=True, eq=False)
class AttentionStructure:
    """Causal attention plus optional bidirectional blocks, per sequence of a batch.

    Attributes:
        block_ids: ``[batch, pos]`` long tensor (CPU); positions of one sequence that share an id
            ``>= 0`` attend to each other in both directions, ``-1`` is causal only. Positions
            past ``pos`` (generated tokens) are in no block.

    Example:
        >>> AttentionStructure.causal(2, 5).is_causal
        True
        >>> AttentionStructure.prefix([3, 2], 5).block_ids.tolist()
        [[0, 0, 0, -1, -1], [0, 0, -1, -1, -1]]
    """

    block_ids: Int[Tensor, "batch pos"]

    def __post_init__(self) -> None:
        ids = self.block_ids
        if ids.ndim != 2:
            raise ValueError(f"block_ids must be [batch, pos], got shape {tuple(ids.shape)}")
        object.__setattr__(self, "block_ids", ids.detach().to("cpu", torch.long))

    # ------------------------------------------------------------------ construction
    @classmethod
    def causal(cls, batch: int, length: int) -> AttentionStructure:
        """Plain causal attention (every supported family's default)."""
        return cls(torch.full((batch, length), -1, dtype=torch.long))

    @classmethod
    def from_spans(
        cls, batch: int, length: int, spans: Sequence[Sequence[tuple[int, int]]]
    ) -> AttentionStructure:
        """Bidirectional blocks from half-open ``[start, end)`` ranges, one list per sequence.

        Example:
            >>> AttentionStructure.from_spans(1, 5, [[(0, 2), (3, 5)]]).block_ids.tolist()
            [[0, 0, -1, 1, 1]]
        """
        if len(spans) != batch:
            raise ValueError(f"spans has {len(spans)} sequences for a batch of {batch}")
        ids = torch.full((batch, length), -1, dtype=torch.long)
        for b, ranges in enumerate(spans):
            for i, (start, end) in enumerate(ranges):
                if not 0 <= start <= end <= length:
                    raise ValueError(f"block [{start}, {end}) is outside 0..{length}")
                if bool((ids[b, start:end] >= 0).any()):
                    raise ValueError(f"block [{start}, {end}) of sequence {b} overlaps another")
                ids[b, start:end] = i
        return cls(ids)

    @classmethod
    def prefix(cls, lengths: Sequence[int], length: int) -> AttentionStructure:
        """A prefix-LM: positions ``0 .. lengths[b]-1`` of sequence ``b`` see each other."""
        return cls.from_spans(len(lengths), length, [[(0, int(n))] for n in lengths])

    # ------------------------------------------------------------------ queries
    @property
    def shape(self) -> tuple[int, int]:
        """``(batch, pos)``."""
        return (int(self.block_ids.shape[0]), int(self.block_ids.shape[1]))

    @property
    def is_causal(self) -> bool:
        """True when no position is in a bidirectional block."""
        return not bool((self.block_ids >= 0).any())

    def _ids(self, positions: Tensor, sequence: int) -> Tensor:
        """Block ids of `positions` of one sequence (``-1`` past the prompt)."""
        ids = self.block_ids[sequence]
        positions = positions.to("cpu", torch.long)
        inside = positions < ids.shape[0]
        return torch.where(inside, ids[positions.clamp(max=ids.shape[0] - 1)], -1)

    def visible(
        self, q_positions: Tensor, k_positions: Tensor, sequence: int | None = None
    ) -> Bool[Tensor, "*batch n_q n_k"]:
        """Whether each query position may attend to each key position.

        Args:
            q_positions: ``[n_q]`` query positions (may lie past the prompt: generated tokens).
            k_positions: ``[n_k]`` key positions.
            sequence: one sequence of the batch; ``None`` for all of them.

        Returns:
            ``[n_q, n_k]`` for one sequence, else ``[batch, n_q, n_k]`` (bool, CPU).

        Example:
            >>> s = AttentionStructure.from_spans(1, 4, [[(1, 3)]])
            >>> s.visible(torch.tensor([1]), torch.arange(4), sequence=0).tolist()
            [[True, True, True, False]]
        """
        q = q_positions.to("cpu", torch.long)
        k = k_positions.to("cpu", torch.long)
        if sequence is None:
            return torch.stack([self.visible(q, k, b) for b in range(self.shape[0])])
        return (k[None, :] <= q[:, None]) | self.same_block(q, k, sequence)

    def same_block(self, q_positions: Tensor, k_positions: Tensor, sequence: int) -> Tensor:
        """``[n_q, n_k]``: whether each query and key of one sequence share a block (what
        Hugging Face ORs onto the causal mask, sliding window or not).

        Example:
            >>> s = AttentionStructure.from_spans(1, 4, [[(1, 3)]])
            >>> s.same_block(torch.tensor([2]), torch.arange(4), 0).tolist()
            [[False, True, True, False]]
        """
        qb = self._ids(q_positions.to("cpu", torch.long), sequence)
        kb = self._ids(k_positions.to("cpu", torch.long), sequence)
        return (qb[:, None] == kb[None, :]) & (qb[:, None] >= 0)

    def mask(self, q_len: int | None = None, k_len: int | None = None) -> Bool[Tensor, "b q k"]:
        """The ``[batch, q_len, k_len]`` visibility of the last `q_len` of `k_len` positions
        (default: the prompt, ``q_len = k_len = pos``), as a block of queries on a KV cache
        sees it."""
        length = self.shape[1]
        k_len = length if k_len is None else k_len
        q_len = k_len if q_len is None else q_len
        k = torch.arange(k_len)
        return self.visible(k[k_len - q_len :], k)

    def block_start(self) -> Int[Tensor, "batch pos"]:
        """The first position each position shares its block with (itself outside blocks)."""
        batch, length = self.shape
        pos = torch.arange(length).expand(batch, length)
        start = pos.clone()
        for b in range(batch):
            ids = self.block_ids[b]
            for block in ids[ids >= 0].unique().tolist():
                members = ids == block
                start[b, members] = int(pos[b, members].min())
        return start

    def earliest_affected(self, first: Int[Tensor, " batch"]) -> Int[Tensor, " batch"]:
        """The earliest position a change starting at position ``first[b]`` can reach, through
        any number of layers (a position changes when it reads a changed one).

        Causally that is ``first`` itself; a bidirectional block reaches back to its start, and
        every later position's block too. ``first[b] >= pos`` (nothing changes) is kept.
        """
        first = first.to("cpu", torch.long)
        batch, length = self.shape
        if self.is_causal or length == 0:
            return first.clone()
        # reach[b, p]: the earliest block start among positions >= p (every later position
        # is reached causally, and each reaches the start of its block).
        reach = self.block_start().flip(1).cummin(dim=1).values.flip(1)
        out = first.clone()
        for b in range(batch):
            p = int(first[b])
            while p < length:
                earlier = int(reach[b, p])
                if earlier >= p:
                    break
                p = earlier
            out[b] = p
        return out

    def blocks(self) -> list[tuple[int, int, int]]:
        """Every bidirectional block as ``(sequence, first position, last position)``.

        Example:
            >>> AttentionStructure.from_spans(2, 5, [[(1, 3)], []]).blocks()
            [(0, 1, 2)]
        """
        out = []
        for b in range(self.shape[0]):
            ids = self.block_ids[b]
            for block in ids[ids >= 0].unique().tolist():
                where = (ids == block).nonzero().flatten()
                out.append((b, int(where.min()), int(where.max())))
        return out

    def cut_blocks(self, upto: int) -> list[tuple[int, int, int]]:
        """The blocks a prefix ``0 .. upto-1`` would cut through (members on both sides of
        `upto`), as in `blocks`."""
        return [(b, first, last) for b, first, last in self.blocks() if first < upto <= last]

    def select(self, batch_indices: Sequence[int]) -> AttentionStructure:
        """The structure of a subset of the sequences."""
        return AttentionStructure(self.block_ids[list(batch_indices)])

    def same_as(self, other: AttentionStructure) -> bool:
        """Whether two structures are equal (same shape and blocks)."""
        return self.shape == other.shape and torch.equal(self.block_ids, other.block_ids)

    def __repr__(self) -> str:
        if self.is_causal:
            return f"AttentionStructure(causal, shape={self.shape})"
        return f"AttentionStructure(shape={self.shape}, blocks={self.blocks()})"

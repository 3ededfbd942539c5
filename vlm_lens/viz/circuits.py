"""A circuitsvis attention view of a VLM prompt with the image span collapsed.

A prompt with a 1,024-token image has a ``1,040 x 1,040`` pattern per head, about 35 MB of
JSON for 32 heads and unreadable as tokens. `collapse_image_span` merges each image span into
a few labelled pseudo-tokens (``<image 0:128>``...), or keeps a chosen window of image tokens and
merges the rest, and `attention_heads_view` hands the result to circuitsvis'
``attention_heads``. Merging keeps rows stochastic: a merged key column is the **sum** of its
keys' attention, a merged query row the **mean** of its queries' rows.

Example:
    >>> import torch
    >>> from vlm_lens.layout import TokenLayout, TokenSpec
    >>> spec = TokenSpec(image_token_ids=frozenset({9}))
    >>> layout = TokenLayout.from_input_ids(torch.tensor([[1] + [9] * 8 + [5, 6]]), spec)
    >>> pattern = torch.tril(torch.ones(2, 11, 11))
    >>> pattern = pattern / pattern.sum(-1, keepdim=True)
    >>> tokens = ["<s>"] + ["<img>"] * 8 + ["a", "b"]
    >>> small, labels = collapse_image_span(pattern, layout, tokens, chunks=2)
    >>> labels
    ['<s>', '<image 0:4>', '<image 4:8>', 'a', 'b']
    >>> small.shape, torch.allclose(small.sum(-1), torch.ones(2, 5))
    (torch.Size([2, 5, 5]), True)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from circuitsvis.attention import attention_heads
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Float
from torch import Tensor

from vlm_lens.layout import TokenLayout

Pattern = Float[Tensor, "head q k"] | Float[Tensor, "batch head q k"]
"""A post-softmax attention pattern (``cache[hooks.pattern(layer)]``), one prompt or a batch."""


def _groups(
    layout: TokenLayout,
    tokens: Sequence[str],
    batch_index: int,
    chunks: int,
    window: tuple[int, int] | None,
) -> tuple[list[list[int]], list[str]]:
    """Position groups (in order) and their labels for one sequence."""
    n = layout.shape[1]
    pad = layout.mask("pad")[batch_index].tolist()
    spans = layout.spans[batch_index]
    starts = {span.start: (i, span) for i, span in enumerate(spans)}
    groups: list[list[int]] = []
    labels: list[str] = []
    pos = 0
    while pos < n:
        if pad[pos]:
            pos += 1
            continue
        if pos not in starts:
            groups.append([pos])
            labels.append(str(tokens[pos]))
            pos += 1
            continue
        image, span = starts[pos]
        prefix = "<image" if len(spans) == 1 else f"<image{image}"
        members = list(range(span.start, span.end + 1))
        for lo, hi, single in _split(len(members), chunks, window):
            groups.append(members[lo:hi])
            labels.append(f"{prefix} {lo}>" if single else f"{prefix} {lo}:{hi}>")
        pos = span.end + 1
    return groups, labels


def _split(length: int, chunks: int, window: tuple[int, int] | None) -> list[tuple[int, int, bool]]:
    """``(lo, hi, single)`` pieces of a span of `length` positions."""
    if window is None:
        k = max(1, min(chunks, length))
        bounds = [round(i * length / k) for i in range(k + 1)]
        return [(bounds[i], bounds[i + 1], False) for i in range(k) if bounds[i + 1] > bounds[i]]
    lo, hi = max(0, window[0]), min(length, window[1])
    if lo >= hi:
        raise ValueError(
            f"window {window} selects no position of an image span of {length} positions; pass "
            f"(start, stop) with 0 <= start < stop <= {length}"
        )
    pieces = [(0, lo, False)] if lo > 0 else []
    pieces += [(i, i + 1, True) for i in range(lo, hi)]
    pieces += [(hi, length, False)] if hi < length else []
    return pieces


def collapse_image_span(
    pattern: Pattern,
    layout: TokenLayout,
    tokens: Sequence[str],
    *,
    batch_index: int = 0,
    chunks: int = 8,
    window: tuple[int, int] | None = None,
) -> tuple[Float[Tensor, "head q2 k2"], list[str]]:
    """Merge each image span of one sequence into labelled groups; drop padding.

    Args:
        pattern: ``[head, q, k]`` of the sequence, or ``[batch, head, q, k]``.
        layout: the batch's `TokenLayout` (``batch.layout``).
        tokens: the sequence's tokens as strings (``model.to_str_tokens(batch, i)``).
        batch_index: which sequence of `layout` (and of a 4-D `pattern`).
        chunks: contiguous groups per image span (without `window`).
        window: ``(start, stop)`` span positions (0 = the span's first position) kept as single
            tokens; the span before and after it becomes one group each.

    Returns:
        ``([head, groups, groups] float32, labels)``; key groups sum, query groups average.

    Raises:
        ValueError: when shapes of `pattern`, `layout` and `tokens` disagree, or for an empty
            `window`.

    Example:
        >>> small, labels = collapse_image_span(cache[hooks.pattern(8)], batch.layout,
        ...                                     model.to_str_tokens(batch))  # doctest: +SKIP
    """
    if pattern.ndim == 4:
        pattern = pattern[batch_index]
    n = layout.shape[1]
    if pattern.ndim != 3 or pattern.shape[1:] != (n, n) or len(tokens) != n:
        raise ValueError(
            f"pattern {tuple(pattern.shape)}, layout (batch, pos)={layout.shape} and "
            f"{len(tokens)} tokens disagree; pass the [head, pos, pos] pattern, the layout and "
            "the tokens of the same sequence"
        )
    groups, labels = _groups(layout, tokens, batch_index, chunks, window)
    member = torch.zeros(len(groups), n, dtype=torch.float64)
    for g, positions in enumerate(groups):
        member[g, positions] = 1.0
    a = pattern.detach().to(torch.float64).cpu()
    keys = torch.einsum("hqk,gk->hqg", a, member)
    rows = member / member.sum(dim=1, keepdim=True)
    return torch.einsum("fq,hqg->hfg", rows, keys).float(), labels


def attention_heads_view(
    pattern: Pattern,
    layout: TokenLayout,
    tokens: Sequence[str],
    *,
    batch_index: int = 0,
    chunks: int = 8,
    window: tuple[int, int] | None = None,
    layer: int | None = None,
    decimals: int = 4,
) -> RenderedHTML:
    """circuitsvis' ``attention_heads`` view of one prompt, image spans collapsed.

    Args:
        pattern: ``[head, q, k]`` (or ``[batch, head, q, k]``) post-softmax pattern.
        layout: the batch's `TokenLayout`.
        tokens: the sequence's tokens as strings.
        batch_index: which sequence.
        chunks: groups per image span (see `collapse_image_span`).
        window: image span positions kept as single tokens.
        layer: names the heads ``L{layer}H{h}`` when given.
        decimals: values are rounded to this many decimals (keeps the HTML small).

    Returns:
        circuitsvis' ``RenderedHTML``: shows itself in a notebook; ``.local_src`` is a
        self-contained HTML fragment (the JavaScript inlined, no network). For 1,024 image
        tokens and 32 heads it is 1.4 MB with the default 8 groups (1.3 MB of it the script),
        2.6 MB with a 64-token window; the data grow with the square of the shown positions.

    Example:
        >>> _, cache = model.run_with_cache(batch, names_filter=hooks.pattern(8))  # doctest: +SKIP
        >>> attention_heads_view(cache[hooks.pattern(8)], batch.layout,
        ...                      model.to_str_tokens(batch), layer=8)  # doctest: +SKIP
    """
    small, labels = collapse_image_span(
        pattern, layout, tokens, batch_index=batch_index, chunks=chunks, window=window
    )
    names = None if layer is None else [f"L{layer}H{h}" for h in range(small.shape[0])]
    view = attention_heads(
        attention=small.double().round(decimals=decimals),
        tokens=labels,
        attention_head_names=names,
        mask_upper_tri=True,
    )
    return RenderedHTML(_inert_props(view.local_src), _inert_props(view.cdn_src))


_RENDER_CALL = re.compile(r'render\(\s*"circuits-vis-[^"]*",\s*[\w.]+,\s*')


def _inert_props(src: str) -> str:
    """`src` with every ``<`` of the JSON props of its last render call written ``\\u003c``.

    circuitsvis writes the props (token strings included) as JSON inside a ``<script>``
    element, so a token holding ``</script>`` would end the script and run as HTML. JSON
    syntax has no ``<`` outside strings, and ``\\u003c`` decodes to ``<``: the view shows
    the same tokens, and no string can close the element.
    """
    calls = list(_RENDER_CALL.finditer(src))
    if not calls:
        raise RuntimeError("circuitsvis' rendered HTML has no render call; its format changed")
    start = calls[-1].end()
    end = src.rindex("</script>")
    return src[:start] + src[start:end].replace("<", "\\u003c") + src[end:]

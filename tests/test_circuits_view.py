"""The circuitsvis view: collapsed patterns against brute-force sums, labels, windows, and the
HTML size for a prompt with 1,024 image tokens and 32 heads (the issue's bound: under 5 MB)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlm_lens.layout import TokenLayout, TokenSpec
from vlm_lens.viz import attention_heads_view, collapse_image_span

BOS, BOI, IMG, EOI = 1, 2, 9, 3
SPEC = TokenSpec(
    image_token_ids=frozenset({IMG}),
    image_start_token_ids=frozenset({BOI}),
    image_end_token_ids=frozenset({EOI}),
    bos_token_ids=frozenset({BOS}),
)


def _prompt(n_image: int, n_text: int = 12, pad: int = 0) -> tuple[TokenLayout, list[str]]:
    """A Chameleon-like prompt, left-padded: pad, bos, boi, image x n, eoi (gate), text."""
    ids = [0] * pad + [BOS, BOI] + [IMG] * n_image + [EOI] + list(range(20, 20 + n_text))
    mask = [0] * pad + [1] * (len(ids) - pad)
    layout = TokenLayout.from_input_ids(torch.tensor([ids]), SPEC, torch.tensor([mask]))
    tokens = ["<pad>"] * pad + ["<s>", "<boi>"] + ["<img>"] * n_image + ["<eoss>"]
    tokens += [f"w{i}" for i in range(n_text)]
    return layout, tokens


def _pattern(heads: int, n: int, pad: int = 0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(heads, n, n, generator=g)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    causal[:, :pad] = False
    causal[:pad, :pad] = torch.eye(pad, dtype=torch.bool)
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def _brute(pattern: torch.Tensor, groups: list[list[int]]) -> np.ndarray:
    a = pattern.double().numpy()
    out = np.zeros((a.shape[0], len(groups), len(groups)))
    for h in range(a.shape[0]):
        for f, rows in enumerate(groups):
            for g, cols in enumerate(groups):
                out[h, f, g] = np.mean([sum(a[h, i, j] for j in cols) for i in rows])
    return out


@pytest.mark.parametrize("pad", [0, 2])
def test_collapse_equals_brute_force_sums(pad: int) -> None:
    layout, tokens = _prompt(10, n_text=3, pad=pad)
    n = len(tokens)
    pattern = _pattern(3, n, pad)
    small, labels = collapse_image_span(pattern, layout, tokens, chunks=3)
    start = pad + 2
    chunks = [list(range(start, start + 3)), list(range(start + 3, start + 7))]
    chunks.append(list(range(start + 7, start + 10)))
    groups = [[pad], [pad + 1], *chunks] + [[p] for p in range(start + 10, n)]
    assert labels == ["<s>", "<boi>", "<image 0:3>", "<image 3:7>", "<image 7:10>", "<eoss>"] + [
        "w0",
        "w1",
        "w2",
    ]
    np.testing.assert_allclose(small.double().numpy(), _brute(pattern, groups), atol=1e-6)
    np.testing.assert_allclose(small.sum(-1).numpy(), 1.0, atol=1e-5)
    batched, _ = collapse_image_span(pattern[None].expand(2, -1, -1, -1), layout, tokens, chunks=3)
    torch.testing.assert_close(batched, small)


def test_window_keeps_image_tokens_single() -> None:
    layout, tokens = _prompt(10, n_text=2)
    pattern = _pattern(2, len(tokens))
    small, labels = collapse_image_span(pattern, layout, tokens, window=(4, 6))
    assert labels[2:6] == ["<image 0:4>", "<image 4>", "<image 5>", "<image 6:10>"]
    groups = [[0], [1], [2, 3, 4, 5], [6], [7], [8, 9, 10, 11], [12], [13], [14]]
    np.testing.assert_allclose(small.double().numpy(), _brute(pattern, groups), atol=1e-6)
    with pytest.raises(ValueError, match="selects no position"):
        collapse_image_span(pattern, layout, tokens, window=(10, 12))
    with pytest.raises(ValueError, match="disagree"):
        collapse_image_span(pattern, layout, tokens[:-1])


@pytest.fixture(scope="module")
def big() -> tuple[torch.Tensor, TokenLayout, list[str]]:
    """1,024 image tokens, 32 heads, 12 text tokens: the issue's size case."""
    layout, tokens = _prompt(1024)
    return _pattern(32, len(tokens)), layout, tokens


def test_view_of_1024_image_tokens_is_small(big) -> None:
    pattern, layout, tokens = big
    view = attention_heads_view(pattern, layout, tokens, layer=8)
    html = view.local_src
    assert len(html.encode()) < 5_000_000
    assert (
        "AttentionHeads" in html and "L8H31" in html and "\\u003cimage 896:1024>" in html
    )  # "<" is written \\u003c in the props
    assert "unpkg.com" not in html  # self-contained: the script is inlined
    windowed = attention_heads_view(pattern, layout, tokens, window=(0, 64)).local_src
    assert len(windowed.encode()) < 5_000_000
    assert "\\u003cimage 63>" in windowed and "\\u003cimage 64:1024>" in windowed


def test_a_token_holding_a_closing_script_tag_stays_text() -> None:
    """A vocabulary token ``</script><img ...>`` must not end the view's script element; the
    view still carries the token's exact text (decoded from the props JSON)."""
    import json
    import re

    evil = "</script><img src=x onerror=alert(7)>"
    layout, tokens = _prompt(4, n_text=3)
    tokens[-1] = evil
    view = attention_heads_view(_pattern(2, len(tokens)), layout, tokens)
    for src in (view.local_src, view.cdn_src):
        assert src.count("</script>") == 1 and src.rstrip().endswith("</script>")
        assert "<img" not in src and "<!--" not in src.split("<script", 1)[1]
        call = list(re.finditer(r'render\(\s*"circuits-vis-[^"]*",\s*[\w.]+,\s*', src))[-1]
        props = src[call.end() : src.rindex(")")]
        assert evil in json.loads(props)["tokens"]

"""attention_share against numbers computed by hand from the HF reference's output_attentions.
(That the query rows computed from hook_rot_q/hook_rot_k equal HF eager's is part of the family
contract: tests/contract/test_attention_paths.py.)

The expected values are built with plain loops over positions, from each position's roles and
image index in the layout, and from ``reference(**inputs, output_attentions=True)``: no code of
`vlm_lens.analysis` is used for them.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from tests.conftest import Wrapped, wrap
from vlm_lens import Batch, hooks
from vlm_lens.analysis.attention_share import AttentionShareResult, attention_share, group_masks
from vlm_lens.engine.attention_rows import image_side, key_attention_hooks
from vlm_lens.positions import image_token
from vlm_lens.testing import sample_image

GROUPS = ("gate", "image_end", "image_row_end", "first_image_token", "last_image_token", "image")


def _two_image_batch(w: Wrapped) -> Batch:
    placeholder = w.model.image_placeholder
    text = w.tiny.prompt.replace(placeholder, f"{placeholder} and {placeholder}")
    images = [sample_image(seed=k, size=w.tiny.image_size) for k in (3, 4)]
    return w.model.prepare(images=[images], text=[text])


def _batch(w: Wrapped, case: str) -> Batch:
    if case == "single":
        return w.batch(1)
    if case == "two_images":
        return _two_image_batch(w)
    batch = w.batch(2, padding_side=case)
    assert batch.layout.mask("pad").any()
    return batch


def _expected(w: Wrapped, batch: Batch) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per prompt: un-normalised group masses [layers, groups] and image-token masses."""
    with torch.no_grad():
        attentions = w.reference(**batch.inputs, output_attentions=True).attentions
    layout = batch.layout
    masses, tokens = [], []
    for b in range(len(batch)):
        n = batch.input_ids.shape[1]
        roles = [layout.roles_at(b, p) for p in range(n)]
        image_of = layout.image_index[b].tolist()
        last_gate = max(p for p in range(n) if "gate" in roles[p])
        queries = [p for p in range(n) if "text" in roles[p] and p > last_gate]
        keys = [p for p in range(n) if image_of[p] >= 0 and "image_start" not in roles[p]]
        image_tokens = [p for p in keys if "image" in roles[p]]
        firsts = {min(p for p in image_tokens if image_of[p] == k) for k in set(image_of) - {-1}}
        lasts = {max(p for p in image_tokens if image_of[p] == k) for k in set(image_of) - {-1}}

        def group(p: int, roles: list = roles, firsts: set = firsts, lasts: set = lasts) -> int:
            for g, role in enumerate(("gate", "image_end", "image_row_end")):
                if role in roles[p]:
                    return g
            if p in firsts:
                return 3
            return 4 if p in lasts else 5

        layer_mass = np.zeros((len(attentions), len(GROUPS)))
        layer_tokens = np.zeros((len(attentions), len(image_tokens)))
        for layer, att in enumerate(attentions):
            a = att[b].double().numpy()  # [head, q, k]
            for j in keys:
                m = sum(a[h, i, j] for h in range(a.shape[0]) for i in queries) / len(queries)
                layer_mass[layer, group(j)] += m
                if j in image_tokens:
                    layer_tokens[layer, image_tokens.index(j)] = m
        masses.append(layer_mass)
        tokens.append(layer_tokens)
    return np.stack(masses), tokens


@pytest.mark.parametrize("case", ["single", "left", "right", "two_images"])
def test_matches_reference_attentions(wrapped: Wrapped, case: str) -> None:
    batch = _batch(wrapped, case)
    result = attention_share(wrapped.model, batch)
    masses, tokens = _expected(wrapped, batch)
    assert result.groups == GROUPS
    assert result.layers == tuple(range(wrapped.model.cfg.n_layers))
    assert result.n_prompts == len(batch)
    mass = masses.mean(axis=0)
    np.testing.assert_allclose(result.mass, mass, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.share, mass / mass.sum(1, keepdims=True), rtol=0, atol=1e-6)
    per_prompt = masses / masses.sum(2, keepdims=True)
    np.testing.assert_allclose(result.per_prompt, per_prompt, rtol=0, atol=1e-6)
    assert result.per_token is not None
    expected_tokens = np.stack(tokens).mean(0) / mass.sum(1, keepdims=True)
    np.testing.assert_allclose(result.per_token, expected_tokens, rtol=0, atol=1e-6)
    # heads summed, not averaged: the masses are not those of head-averaged attention
    assert not np.allclose(result.mass, mass / wrapped.model.cfg.n_heads, atol=1e-3)


def test_several_batches_average_unnormalised(wrapped: Wrapped) -> None:
    first, second = wrapped.batch(1), wrapped.batch(2, padding_side="left")
    result = attention_share(wrapped.model, iter([first, second]), progress=False)
    masses = np.concatenate([_expected(wrapped, first)[0], _expected(wrapped, second)[0]])
    assert result.n_prompts == 3
    mass = masses.mean(axis=0)
    np.testing.assert_allclose(result.share, mass / mass.sum(1, keepdims=True), rtol=0, atol=1e-6)
    # averaging normalised prompts would be a different number
    averaged = (masses / masses.sum(2, keepdims=True)).mean(0)
    assert not np.allclose(result.share, averaged, atol=1e-9)


def test_layer_subset_equals_full_run(wrapped: Wrapped) -> None:
    batch = wrapped.batch(2, padding_side="left")
    full = attention_share(wrapped.model, batch)
    first = attention_share(wrapped.model, batch, layers=[0])
    last = attention_share(wrapped.model, batch, layers=[-1])
    assert first.layers == (0,) and last.layers == (wrapped.model.cfg.n_layers - 1,)
    np.testing.assert_array_equal(first.mass[0], full.mass[0])
    np.testing.assert_array_equal(last.mass[0], full.mass[-1])


def test_shares_sum_to_one_and_groups_are_disjoint(wrapped: Wrapped) -> None:
    batch = wrapped.batch(2, padding_side="right")
    result = attention_share(wrapped.model, batch)
    np.testing.assert_allclose(result.share.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(result.per_prompt.sum(2), 1.0, atol=1e-12)
    assert (result.share >= 0).all()
    members = group_masks(batch.layout, {"gate": "gate", "first": image_token(0)})
    assert int(members.sum(1).max()) == 1
    assert torch.equal(members.any(1), image_side(batch.layout))
    frame = result.to_frame()
    assert list(frame.columns) == ["layer", "group", "share"]
    assert len(frame) == len(result.layers) * len(result.groups)
    np.testing.assert_allclose(frame.groupby("layer")["share"].sum(), 1.0, atol=1e-12)


def test_custom_named_group(wrapped: Wrapped) -> None:
    batch = wrapped.batch(1)
    base = attention_share(wrapped.model, batch)
    custom = attention_share(wrapped.model, batch, groups={"third": image_token(2)})
    assert custom.groups == (*GROUPS[:-1], "third", "image")
    assert base.per_token is not None
    np.testing.assert_allclose(custom.share[:, -2], base.per_token[:, 2], atol=1e-12)
    np.testing.assert_allclose(custom.share[:, -1], base.share[:, -1] - base.per_token[:, 2])
    np.testing.assert_allclose(custom.share.sum(1), 1.0, atol=1e-12)
    # an earlier group keeps a position that a later one also names
    again = attention_share(wrapped.model, batch, groups={"first_again": image_token(0)})
    assert (again.share[:, again.groups.index("first_again")] == 0).all()
    dropped = attention_share(wrapped.model, batch, groups={"first_image_token": None})
    assert "first_image_token" not in dropped.groups
    with pytest.raises(ValueError, match="remainder"):
        attention_share(wrapped.model, batch, groups={"image": "image"})


def test_per_token_none_when_image_token_counts_differ() -> None:
    w = wrap("chameleon")
    two = _two_image_batch(w)
    result = attention_share(w.model, [w.batch(1), two])
    assert result.per_token is None
    assert result.n_prompts == 2


def test_hooks_read_rotated_queries_and_keys_only(wrapped: Wrapped) -> None:
    """The analysis hooks never touch hook_pattern/hook_attn_scores, so no layer is forced to
    the eager path."""
    batch = wrapped.batch(1)
    rows = query_rows_of(batch)
    names = [name for name, _ in key_attention_hooks(wrapped.model, batch.layout, [0, 1], rows, {})]
    assert names == [hooks.rot_q(0), hooks.rot_k(0), hooks.rot_q(1), hooks.rot_k(1)]


def query_rows_of(batch: Batch) -> list[torch.Tensor]:
    from vlm_lens.engine.attention_rows import query_rows
    from vlm_lens.positions import after

    return query_rows(after("text", "gate"), batch.layout)


def test_result_holds_no_attention_pattern(wrapped: Wrapped) -> None:
    batch = wrapped.batch(2, padding_side="left")
    n = batch.input_ids.shape[1]
    result = attention_share(wrapped.model, batch)
    assert isinstance(result, AttentionShareResult)
    for value in vars(result).values():
        assert not isinstance(value, torch.Tensor)
        if isinstance(value, np.ndarray):
            assert n not in value.shape, value.shape


def test_errors(wrapped: Wrapped) -> None:
    batch = wrapped.batch(1)
    with pytest.raises(ValueError, match="query"):
        attention_share(wrapped.model, batch, queries="pad")
    with pytest.raises(ValueError, match="layers"):
        attention_share(wrapped.model, batch, layers=[99])
    with pytest.raises(TypeError, match="Batch"):
        attention_share(wrapped.model, [batch.inputs])


def test_batches_are_read_lazily(wrapped: Wrapped, monkeypatch: pytest.MonkeyPatch) -> None:
    """A generator of batches is read one batch at a time: each is measured before the next
    is made (memory stays at one batch however many the dataset has)."""
    events: list[str] = []
    module = importlib.import_module("vlm_lens.analysis.attention_share")  # not the function
    measured = module.run

    def run(*args: object, **kwargs: object) -> None:
        events.append("measured")
        measured(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "run", run)

    def batches():  # noqa: ANN202
        for size in (1, 2, 1):
            events.append("made")
            yield wrapped.batch(size)

    assert attention_share(wrapped.model, batches()).n_prompts == 4
    assert events == ["made", "measured"] * 3

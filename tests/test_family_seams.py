"""The adapter seams the next families need: image count, position ids, image features,
attention structure; and that wrapping patches no Hugging Face class.

Test adapters (subclasses of the LLaVA adapter, defined here) declare what Gemma 3, PaliGemma
and Qwen2-VL will: a bidirectional block per image, a bidirectional prefix, multi-axis position
ids, a different image count. Every expectation is derived independently: visibility, earliest
affected positions and reusable prefixes by brute force over all (query, key) pairs from the
definition (a key is visible at or before the query, or when both lie in one block), position
ids by recording what the Hugging Face forward receives.
"""

from __future__ import annotations

import copy
import inspect
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import vlm_lens.model as model_module
from tests.conftest import Wrapped, wrap
from vlm_lens import HookedVLM, VLMInputError, hooks
from vlm_lens.adapters import LlavaAdapter, VLMAdapter
from vlm_lens.analysis import run_sweep
from vlm_lens.attention_structure import AttentionStructure
from vlm_lens.engine.attention_rows import key_attention_hooks
from vlm_lens.engine.prefix import check_upto, reusable_from
from vlm_lens.engine.suffix_stack import run_suffixes
from vlm_lens.interventions import (
    gate_knockout,
    image_to_text_knockout,
    knockout,
    random_image_knockout,
)
from vlm_lens.layout import TokenLayout
from vlm_lens.positions import ALL, after
from vlm_lens.testing import build_tiny, sample_image

PREFIX_EXTRA = 3
"""The prefix-LM test family's prefix: everything up to 3 positions past the gate."""


# ---------------------------------------------------------------------- test families
def _image_spans(layout: TokenLayout) -> list[list[tuple[int, int]]]:
    return [[(s.start, s.end + 1) for s in row] for row in layout.spans]


def _prefix_ends(layout: TokenLayout) -> list[int]:
    gates = layout.positions("gate")
    return [int(g[0]) + PREFIX_EXTRA for g in gates]


class BidirectionalImageAdapter(LlavaAdapter):
    """Gemma 3-like: the tokens of each image attend to each other both ways."""

    def attention_structure(self, layout, inputs=None):
        return AttentionStructure.from_spans(*layout.shape, _image_spans(layout))


class PrefixLMAdapter(LlavaAdapter):
    """PaliGemma-like: a bidirectional prefix (image + the first prompt tokens)."""

    def attention_structure(self, layout, inputs=None):
        return AttentionStructure.prefix(_prefix_ends(layout), layout.shape[1])


def _blocks(w: Wrapped, batch) -> list[list[tuple[int, int]]]:
    """The blocks each test family declares, as plain ``[start, end)`` ranges."""
    adapter = w.model.adapter
    if isinstance(adapter, BidirectionalImageAdapter):
        return _image_spans(batch.layout)
    if isinstance(adapter, PrefixLMAdapter):
        return [[(0, n)] for n in _prefix_ends(batch.layout)]
    return [[] for _ in range(len(batch))]


@contextmanager
def _adapter(model: HookedVLM, adapter_cls: type[VLMAdapter]) -> Iterator[HookedVLM]:
    saved = model.adapter
    model.adapter = adapter_cls(model.hf_model, model.processor)
    try:
        yield model
    finally:
        model.adapter = saved


@pytest.fixture(scope="module")
def llava() -> Wrapped:
    return wrap("llava")


# ---------------------------------------------------------------------- brute force
def _visible(blocks: list[tuple[int, int]], q: int, k: int) -> bool:
    return k <= q or any(s <= q < e and s <= k < e for s, e in blocks)


def _earliest(blocks, length: int, edges) -> int:
    """Brute force: the positions whose attention loses an edge change; a position that reads
    a changed position changes in the next layer, until nothing more changes."""
    return _changed_from(blocks, length, {q for q, k in edges if _visible(blocks, q, k)})


def _changed_from(blocks: list[tuple[int, int]], length: int, written: set[int]) -> int:
    """Brute force for writes: the written positions change; a position that reads a changed
    one changes in the next layer, until nothing more changes."""
    changed = set(written)
    while True:
        more = {
            q
            for q in range(length)
            if q not in changed and any(_visible(blocks, q, p) for p in changed)
        }
        if not more:
            return min(changed, default=length)
        changed |= more


def _random_blocks(rng: random.Random, length: int) -> list[tuple[int, int]]:
    cuts = sorted(rng.sample(range(length + 1), 4))
    blocks = [(cuts[0], cuts[1]), (cuts[2], cuts[3])]
    return [(s, e) for s, e in blocks if e - s >= 2][: rng.randint(0, 2)]


# ---------------------------------------------------------------------- the structure itself
@pytest.mark.parametrize("seed", range(6))
def test_structure_mask_and_earliest_match_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    length = rng.randint(6, 12)
    spans = [_random_blocks(rng, length) for _ in range(3)]
    structure = AttentionStructure.from_spans(3, length, spans)
    mask = structure.mask()
    for b, blocks in enumerate(spans):
        for q in range(length):
            for k in range(length):
                assert bool(mask[b, q, k]) == _visible(blocks, q, k), (b, q, k, blocks)
        starts = torch.tensor([rng.randint(0, length)])
        one = AttentionStructure.from_spans(1, length, [blocks])
        first = int(starts[0])
        expected = _earliest(blocks, length, [(first, k) for k in range(length)])
        expected = min(expected, first)
        assert int(one.earliest_affected(starts)[0]) == expected
    # a block of queries on a cache sees the last q_len rows of the full mask
    assert torch.equal(structure.mask(q_len=2, k_len=length), mask[:, -2:])
    generated = structure.mask(q_len=1, k_len=length + 2)
    assert generated.shape == (3, 1, length + 2) and bool(generated.all())


def test_structure_rejects_bad_blocks() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        AttentionStructure.from_spans(1, 6, [[(0, 3), (2, 5)]])
    with pytest.raises(ValueError, match="outside"):
        AttentionStructure.from_spans(1, 6, [[(4, 9)]])


# ---------------------------------------------------------------------- defaults
def test_defaults_reproduce_the_four_families(wrapped: Wrapped) -> None:
    batch = wrapped.batch(2)
    adapter = wrapped.model.adapter
    assert batch.attention is not None
    # from the layout alone, the structure of the processor's prompts
    assert adapter.attention_structure(batch.layout).same_as(batch.attention)
    length = batch.input_ids.shape[1]
    # the structure is what HF's own eager attention lets a real query read (every allowed
    # weight of a random model is > 0): every layer reads within it, the widest (a
    # full-attention layer) all of it (PaliGemma's bidirectional prefix, Gemma 3's bidirectional
    # image blocks; Gemma 3's sliding-window layers read less)
    hf_layer = _reference_layer(wrapped, 0)
    seen: dict[str, Any] = {}

    def keep(module: Any, args: Any, kwargs: dict[str, Any]) -> None:  # noqa: ARG001
        seen.setdefault("position_ids", kwargs.get("position_ids"))

    handle = hf_layer.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            attentions = wrapped.reference(**batch.inputs, output_attentions=True).attentions
    finally:
        handle.remove()
    real = ~batch.layout.mask("pad")
    pairs = real[:, :, None] & real[:, None, :]
    read = [(weights > 0).any(1) & pairs for weights in attentions]
    ours = batch.attention.mask() & pairs
    assert all(not bool((layer & ~ours).any()) for layer in read)
    assert torch.equal(max(read, key=lambda layer: int(layer.sum())), ours)
    rope_index = getattr(wrapped.reference.model, "get_rope_index", None)
    if rope_index is None:  # what HF's forward gives its decoder layers (PaliGemma: from 1)
        expected = seen["position_ids"]
        assert expected is not None and expected.shape[-1] == length
    else:  # multi-axis rotary positions (Qwen-VL): HF's own
        expected, _ = rope_index(
            batch.input_ids,
            mm_token_type_ids=batch.inputs["mm_token_type_ids"],
            image_grid_thw=batch.inputs["image_grid_thw"],
            attention_mask=batch.inputs.get("attention_mask"),
        )
    assert torch.equal(adapter.position_ids(batch.inputs), expected)
    # the rows of HF's get_image_features: one per image, per tile (InternVL) or per
    # sequence (Idefics3), as feature_groups hands them to hook_image_embeds
    owner = adapter.image_features_owner(wrapped.reference)
    params = inspect.signature(owner.get_image_features).parameters
    with torch.no_grad():
        out = owner.get_image_features(**{k: v for k, v in batch.inputs.items() if k in params})
    rows = len(adapter.image_features(out))
    assert sum(adapter.feature_groups(batch.layout)) == rows
    # what count_images counts: images, or the tiles HF encodes (its all-zero padding aside)
    if adapter.pixel_rows == "image":
        assert adapter.count_images(batch.inputs) == sum(batch.layout.n_images) == rows
    else:
        pixels = batch.inputs["pixel_values"]
        tiles = pixels.reshape(-1, *pixels.shape[-3:]).flatten(1).ne(0).any(1)
        assert adapter.count_images(batch.inputs) == int(tiles.sum())


def _reference_layer(wrapped: Wrapped, layer: int) -> torch.nn.Module:
    """The HF reference's decoder layer `layer` (the module the bridge's block wraps)."""
    block = wrapped.model.bridge.blocks[layer].original_component
    name = next(n for n, m in wrapped.model.hf_model.named_modules() if m is block)
    return wrapped.reference.get_submodule(name.replace("._original_component", ""))


# ---------------------------------------------------------------------- knockouts
def _knockouts(batch) -> dict[str, Any]:
    first_image = [int(p[0]) for p in batch.layout.positions("image")]
    return {
        "gate": gate_knockout(batch, layers=[0]),
        "image->text": image_to_text_knockout(batch, layers=[0]),
        "random": random_image_knockout(batch, k=3, seed=1, layers=[0]),
        "image->image": knockout(batch, queries="image", keys="image", mode="zero"),
        "late image": knockout(
            batch,
            queries=ALL,
            keys=lambda lay: lay.mask("image") & (torch.arange(lay.shape[1]) > max(first_image)),
            mode="zero",
        ),
        "text after gate": knockout(batch, queries=after("text", "gate"), keys="text"),
    }


@pytest.mark.parametrize("family", [BidirectionalImageAdapter, PrefixLMAdapter, LlavaAdapter])
def test_knockout_earliest_follows_brute_force(llava: Wrapped, family: type) -> None:
    with _adapter(llava.model, family):
        batch = llava.batch(2, padding_side="right")
        blocks = _blocks(llava, batch)
        length = batch.input_ids.shape[1]
        for name, ko in _knockouts(batch).items():
            for b in range(len(batch)):
                edges = _edges_of(ko, batch, b)
                assert edges, name
                expected = _earliest(blocks[b], length, edges)
                assert int(ko.earliest_position[b]) == expected, (name, b, family.__name__)


@pytest.mark.parametrize("family", [BidirectionalImageAdapter, LlavaAdapter])
def test_random_image_knockout_reaches_back_to_the_block(llava: Wrapped, family: type) -> None:
    """Knocking out image keys: with a bidirectional image block every image position reads
    them, so the earliest position is the first image token; causally it is the first key."""
    with _adapter(llava.model, family):
        batch = llava.batch(1)
        blocks = _blocks(llava, batch)[0]
        ko = random_image_knockout(batch, k=3, seed=1, layers=[0])
        keys = sorted({k for _, k in _edges_of(ko, batch, 0)})
        if blocks:
            assert ko.earliest == blocks[0][0] < min(keys)
        else:
            assert ko.earliest == min(keys)


def _edges_of(ko, batch, b: int) -> list[tuple[int, int]]:
    """The (query, key) edges a knockout's hook blocks on the full prompt of sequence `b`,
    read off the hook by feeding it a pattern of ones."""
    name, fn = ko[0]
    length = batch.input_ids.shape[1]
    hook = SimpleNamespace(name=name if isinstance(name, str) else hooks.attn_scores(0))
    out = fn(torch.ones(len(batch), 1, length, length), hook)
    return [(int(q), int(k)) for q, k in (out[b, 0] != 1).nonzero()]


def test_mask_knockout_rows_keep_keys_of_their_block(llava: Wrapped) -> None:
    """Blocking every key at or before the first image token leaves it no key causally (an
    error in mask mode), but its block's later image tokens stay readable."""
    batch = llava.batch(1)
    first = int(batch.layout.positions("image")[0][0])
    queries = torch.zeros(batch.layout.shape, dtype=torch.bool)
    queries[0, first] = True
    keys = torch.zeros(batch.layout.shape, dtype=torch.bool)
    keys[0, : first + 1] = True
    with pytest.raises(ValueError, match="block every key"):
        knockout(batch, queries=queries, keys=keys)
    with _adapter(llava.model, BidirectionalImageAdapter):
        bidirectional = llava.batch(1)
        ko = knockout(bidirectional, queries=queries, keys=keys)
        assert ko.earliest == first


# ---------------------------------------------------------------------- prefix reuse
@pytest.mark.parametrize("family", [BidirectionalImageAdapter, PrefixLMAdapter, LlavaAdapter])
def test_check_upto_follows_brute_force(llava: Wrapped, family: type) -> None:
    with _adapter(llava.model, family):
        batch = llava.batch(2, padding_side="right")
        blocks = _blocks(llava, batch)
        length = batch.input_ids.shape[1]
        image = batch.layout.mask("image")
        last_image = max(int(image[b].nonzero().max()) for b in range(len(batch)))
        for upto in range(length + 1):
            cuts = any(s < upto < e for row in blocks for s, e in row)
            if not last_image < upto < length:
                with pytest.raises(VLMInputError, match="must contain every image token"):
                    check_upto(batch, upto)
            elif cuts:
                with pytest.raises(VLMInputError, match="cuts through a bidirectional"):
                    check_upto(batch, upto)
            else:
                check_upto(batch, upto)
        valid = [u for u in range(length) if not any(s < u < e for r in blocks for s, e in r)]
        assert reusable_from(batch) == min(u for u in valid if u > last_image)


def test_prefix_cache_refuses_to_cut_a_prefix_block(llava: Wrapped) -> None:
    with _adapter(llava.model, PrefixLMAdapter):
        batch = llava.batch(1)
        end = _prefix_ends(batch.layout)[0]
        with pytest.raises(VLMInputError, match=f"upto >= {end}"):
            llava.model.prefix_cache(batch, upto=end - 1)
        prefix = llava.model.prefix_cache(batch, upto=end)
        assert prefix.past_key_values.get_seq_length() == end


def test_sweep_runs_conditions_inside_a_block_in_full(llava: Wrapped) -> None:
    """The gate lies inside the prefix-LM block, so a gate knockout cannot reuse a prefix;
    a knockout after the prefix still does."""
    with _adapter(llava.model, PrefixLMAdapter):
        batch = llava.batch(1)
        end = _prefix_ends(batch.layout)[0]
        late = torch.zeros(batch.layout.shape, dtype=torch.bool)
        late[0, end + 1 :] = True
        conditions = {
            "gate": gate_knockout(batch, layers=[0]),
            "late": knockout(batch, queries=late, keys=late & ~batch.layout.mask("last")),
        }
        assert conditions["gate"].earliest == 0
        result = run_sweep(llava.model, batch, conditions)
        assert result.full_runs == ("gate",)
        assert result.upto == conditions["late"].earliest == end + 1
        full = llava.model.run_with_hooks(batch, fwd_hooks=conditions["late"])
        assert torch.equal(result.logits["late"], full[batch.layout.mask("last")])


# ---------------------------------------------------------------------- attention rows
@pytest.mark.parametrize("family", [BidirectionalImageAdapter, PrefixLMAdapter])
def test_attention_rows_follow_the_structure(llava: Wrapped, family: type) -> None:
    """The rows the hooks compute equal a softmax over the rotated queries and keys with a
    mask built pair by pair from the blocks (and padding)."""
    model = llava.model
    with _adapter(model, family):
        batch = llava.batch(2, padding_side="left")
        blocks = _blocks(llava, batch)
        layout = batch.layout
        rows = [
            (layout.mask("image")[b] | layout.mask("text")[b]).nonzero().flatten()
            for b in range(len(batch))
        ]
        layers = range(model.cfg.n_layers)
        store: dict[int, torch.Tensor] = {}
        names = [n for layer in layers for n in (hooks.rot_q(layer), hooks.rot_k(layer))]
        with torch.no_grad():
            _, cache = model.run_with_cache(batch, names_filter=names)
            model.run_with_hooks(
                batch, fwd_hooks=key_attention_hooks(model, layout, layers, rows, store)
            )
    real = ~layout.mask("pad")
    length = layout.shape[1]
    for layer in layers:
        q_all, k_all = cache[hooks.rot_q(layer)], cache[hooks.rot_k(layer)]
        scaling = model.attention_scaling(layer)
        for b in range(len(batch)):
            mask = torch.tensor(
                [
                    [_visible(blocks[b], int(q), k) and bool(real[b, k]) for k in range(length)]
                    for q in rows[b]
                ]
            )
            q = q_all[b, rows[b]].transpose(0, 1)  # head rows d
            k = k_all[b].transpose(0, 1)
            k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
            scores = (q @ k.transpose(-1, -2)) * scaling
            scores = scores.masked_fill(~mask[None], float("-inf"))
            pattern = torch.softmax(scores.float(), dim=-1)
            expected = pattern.sum(dim=(0, 1)).double() / len(rows[b])
            torch.testing.assert_close(store[layer][b], expected, rtol=1e-5, atol=1e-6)
    causal: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        model.run_with_hooks(
            replace(batch, attention=None),  # the same prompt, causal
            fwd_hooks=key_attention_hooks(model, layout, layers, rows, causal),
        )
    assert not torch.allclose(causal[0], store[0])  # the blocks changed what rows read


# ---------------------------------------------------------------------- position ids
class MultiAxisPositions(LlavaAdapter):
    """Qwen2-VL-like ``[3, batch, pos]`` position ids (axis a holds ``arange + 1000 a`` plus
    ``100 b`` for row b, so any slice is recognisable)."""

    def position_ids(self, inputs):
        ids = inputs["input_ids"]
        batch, length = ids.shape
        pos = torch.arange(length)[None, None] + 1000 * torch.arange(3)[:, None, None]
        return pos + 100 * torch.arange(batch)[None, :, None]


@contextmanager
def _record_positions(model: HookedVLM) -> Iterator[list[torch.Tensor]]:
    """Record the position ids the HF inner model receives; hand it axis 0, row 0's numbering
    minus the markers (``arange`` positions), so the LLaVA decoder still runs."""
    seen: list[torch.Tensor] = []

    def pre_hook(module, args, kwargs):
        pos = kwargs.get("position_ids")
        if pos is not None:
            seen.append(pos.clone())
            if pos.ndim == 3:
                kwargs["position_ids"] = pos[0, :1]  # axis 0 of row 0: plain positions
        return args, kwargs

    handle = model.hf_model.model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def test_default_positions_reach_the_model_in_every_pass(llava: Wrapped) -> None:
    batch = llava.batch(2, padding_side="left")
    length = batch.input_ids.shape[1]
    upto = int(batch.layout.positions("gate")[0][0]) + 1
    with _record_positions(llava.model) as seen, torch.no_grad():
        llava.model(batch)
        prefix = llava.model.prefix_cache(batch, upto=upto)
        llava.model.run_suffix(prefix)
    full, pre, suf = seen
    assert torch.equal(full, torch.arange(length)[None])
    assert torch.equal(pre, torch.arange(upto)[None])
    assert torch.equal(suf, torch.arange(upto, length)[None])


def test_adapter_position_ids_are_sliced_for_prefix_and_suffix_passes(llava: Wrapped) -> None:
    model = llava.model
    with _adapter(model, MultiAxisPositions):
        batch = llava.batch(1)
        length = batch.input_ids.shape[1]
        upto = int(batch.layout.positions("gate")[0][0])
        axes = torch.arange(3)[:, None, None] * 1000
        full_ids = torch.arange(length)[None, None] + axes
        ko = gate_knockout(batch, layers=[1])
        with _record_positions(model) as seen, torch.no_grad():
            model(batch)
            model.run_with_cache(batch, names_filter=hooks.resid_post(0))
            prefix = model.prefix_cache(batch, upto=upto)
            model.run_suffix(prefix, fwd_hooks=ko)
            run_suffixes(model, prefix, [ko], per_pass=1)
        assert len(seen) >= 5, [s.shape for s in seen]  # the stacked passes: one or two
        for s in seen[:2]:
            assert torch.equal(s, full_ids)
        assert torch.equal(seen[2], full_ids[..., :upto])
        for s in seen[3:]:
            assert s.shape == (3, 1, length - upto)
            assert torch.equal(s, full_ids[..., upto:])


def test_position_ids_must_cover_the_prompt(llava: Wrapped) -> None:
    class Short(LlavaAdapter):
        def position_ids(self, inputs):
            return torch.arange(inputs["input_ids"].shape[1] - 1)[None]

    with _adapter(llava.model, Short):
        batch = llava.batch(1)
        with pytest.raises(VLMInputError, match="full prompt"):
            llava.model.prefix_cache(batch, upto=int(batch.layout.positions("gate")[0][0]))


# ---------------------------------------------------------------------- image count
class TwoRowsPerImage(LlavaAdapter):
    """An image is two rows of ``pixel_values`` (as crops or patch rows are)."""

    calls = 0

    def count_images(self, inputs):
        type(self).calls += 1
        pixel_values = inputs.get("pixel_values")
        return 0 if pixel_values is None else int(pixel_values.shape[0]) // 2


def test_count_images_drives_the_image_count_check(llava: Wrapped) -> None:
    batch = llava.batch(2)
    inputs = dict(batch.inputs)
    doubled = {**inputs, "pixel_values": inputs["pixel_values"].repeat_interleave(2, dim=0)}
    with pytest.raises(VLMInputError, match="4 image"):
        llava.model.batch_from_inputs(doubled)
    with _adapter(llava.model, TwoRowsPerImage):
        before = TwoRowsPerImage.calls
        llava.model.adapter.check_inputs(doubled, batch.layout)
        assert TwoRowsPerImage.calls > before
        with pytest.raises(VLMInputError, match="1 image"):
            llava.model.adapter.check_inputs(inputs, batch.layout)


# ---------------------------------------------------------------------- image features
class DictAccessFeatures(LlavaAdapter):
    """Reads and writes the features through the output's mapping interface, and counts."""

    reads = 0
    writes = 0

    def image_features(self, output):
        type(self).reads += 1
        return output["pooler_output"]

    def with_image_features(self, output, features):
        type(self).writes += 1
        output["pooler_output"] = features
        return output


@pytest.fixture(scope="module")
def dict_features() -> Wrapped:
    tiny = build_tiny("llava")
    reference = copy.deepcopy(tiny.model)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_module, "adapter_class_for", lambda model: DictAccessFeatures)
        model = HookedVLM.from_hf(tiny.model, tiny.processor)
    return Wrapped(tiny, model, reference)


def test_image_features_seam_reads_and_writes_through_the_adapter(dict_features: Wrapped) -> None:
    w = dict_features
    assert isinstance(w.model.adapter, DictAccessFeatures)
    batch = w.batch(1)
    reads, writes = DictAccessFeatures.reads, DictAccessFeatures.writes
    with torch.no_grad():
        clean = w.model(batch)
        assert (DictAccessFeatures.reads, DictAccessFeatures.writes) == (reads, writes)
        edited = w.model.run_with_hooks(
            batch, fwd_hooks=[(hooks.IMAGE_EMBEDS, lambda x, hook: x * 0.5)]
        )
        assert (DictAccessFeatures.reads, DictAccessFeatures.writes) == (reads + 1, writes + 1)
        # independent: the HF reference on inputs_embeds with the image features halved
        inputs = dict(batch.inputs)
        decoder_input = w.reference(**inputs, output_hidden_states=True).hidden_states[0]
        mask = inputs["input_ids"] == w.model.adapter.placeholder_token_id
        embeds = decoder_input.clone()
        embeds[mask] = decoder_input[mask] * 0.5
        rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values")}
        expected = w.reference(inputs_embeds=embeds, **rest).logits
        assert torch.equal(clean, w.reference(**inputs).logits)
    assert torch.equal(edited, expected)


# ---------------------------------------------------------------------- no class patch
@pytest.mark.parametrize("family", ["chameleon", "emu3", "janus", "llava"])
def test_wrapping_patches_no_hugging_face_class(family: str) -> None:
    tiny = build_tiny(family)
    other = build_tiny(family).model
    owner_cls = type(other.model)
    before = owner_cls.__dict__["get_image_features"]
    model = HookedVLM.from_hf(tiny.model, tiny.processor, copy_model=False)
    assert owner_cls.__dict__["get_image_features"] is before
    assert not getattr(before, "_vlm_lens_wrapped", False)
    assert "get_image_features" in vars(model.hf_model.model)  # the wrapped instance only
    assert "get_image_features" not in vars(other.model)
    assert other.model.get_image_features.__func__ is before
    fired: list[int] = []
    model.hook_image_embeds.add_hook(lambda x, hook: fired.append(1))
    batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    with torch.no_grad():
        other(**batch.inputs)
        assert fired == []  # the other model's features never meet the wrapped model's hook
        model(batch)
    assert fired == [1]
    model.hook_image_embeds.remove_hooks()
    copied = copy.deepcopy(model.hf_model.model)  # a deep copy is wrapped on the copy
    assert copied.get_image_features.__self__ is copied


@pytest.mark.parametrize("family", [BidirectionalImageAdapter, PrefixLMAdapter, LlavaAdapter])
def test_patch_and_steer_earliest_follow_brute_force(llava: Wrapped, family: type) -> None:
    """A write at position p reaches back to the start of p's block (and of every later
    position's block), so prefix reuse never keeps a position the write changes."""
    from vlm_lens.interventions import steer
    from vlm_lens.interventions.patching import patch, record, residual_site

    with _adapter(llava.model, family):
        batch = llava.batch(2, padding_side="right")
        blocks = _blocks(llava, batch)
        length = batch.input_ids.shape[1]
        d_model = int(llava.model.cfg.d_model)
        for positions in ("gate", "image", "last"):
            mask = batch.layout.mask(positions)
            steered = steer(batch, torch.ones(d_model), layers=[1], positions=positions)
            for b in range(len(batch)):
                written = {int(p) for p in mask[b].nonzero().flatten()}
                expected = _changed_from(blocks[b], length, written)
                assert int(steered.earliest_position[b]) == expected, (positions, b)
        source = record(llava.model, batch, sites=residual_site(1), positions="gate")
        patched = patch(source, batch, positions="gate")
        for b in range(len(batch)):
            written = {int(p) for p in batch.layout.mask("gate")[b].nonzero().flatten()}
            assert int(patched.earliest_position[b]) == _changed_from(blocks[b], length, written)


def test_stacked_passes_repeat_multi_axis_positions_per_condition() -> None:
    """``[axes, batch, suffix]`` position ids are repeated along their batch axis, condition
    by condition, as every other per-sequence input; a shared row stays shared."""
    from vlm_lens.engine.suffix_stack import _repeat

    positions = torch.arange(3 * 2 * 5).reshape(3, 2, 5)
    stacked = _repeat("position_ids", positions, copies=3, rows=2)
    assert torch.equal(stacked, torch.cat([positions] * 3, dim=1))
    flat = torch.arange(10).reshape(2, 5)
    assert torch.equal(_repeat("position_ids", flat, 3, 2), torch.cat([flat] * 3, dim=0))
    shared = torch.arange(5)[None]
    assert _repeat("position_ids", shared, 3, 2) is shared

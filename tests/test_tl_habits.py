"""TransformerLens habits on `HookedVLM` (issue 16): text helpers against the tokenizer itself,
weights against the bridge's and the HF model's, `generate(return_type="str")` against a
decode of the tokens."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from vlm_lens import HookedVLM, VLMInputError
from vlm_lens.engine.tl_habits import BRIDGE_ATTRIBUTES
from vlm_lens.testing import build_tiny, sample_image


@pytest.fixture(scope="module", params=["llava", "chameleon"])
def tl(request: pytest.FixtureRequest) -> tuple[HookedVLM, Any]:
    tiny = build_tiny(request.param)
    return HookedVLM.from_hf(tiny.model, tiny.processor), tiny


def test_to_tokens_to_string_to_str_tokens(tl: tuple[HookedVLM, Any]) -> None:
    model, tiny = tl
    tok = tiny.processor.tokenizer
    texts = ["a", "a b a"]
    ids = model.to_tokens(texts)
    plain = [tok(t)["input_ids"] for t in texts]
    assert ids.shape == (2, max(map(len, plain)))
    for row, want in zip(ids.tolist(), plain, strict=True):
        assert row[len(row) - len(want) :] == want  # left-padded by default
    right = model.to_tokens(texts, padding_side="right")
    assert right[0, : len(plain[0])].tolist() == plain[0]
    assert tok.padding_side == model.tokenizer.padding_side  # restored
    no_bos = model.to_tokens("a b", prepend_bos=False)[0].tolist()
    assert no_bos == tok("a b", add_special_tokens=False)["input_ids"]
    assert model.to_string(ids[1]) == tok.decode(ids[1].tolist())
    assert model.to_string(ids) == [tok.decode(r) for r in ids.tolist()]
    assert model.to_str_tokens("a b a") == tok.convert_ids_to_tokens(plain[1])
    assert model.to_str_tokens(ids, index=1) == tok.convert_ids_to_tokens(ids[1].tolist())
    batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    assert model.to_str_tokens(batch) == tok.convert_ids_to_tokens(batch.input_ids[0].tolist())
    with pytest.raises(VLMInputError, match="model.prepare"):
        model.to_tokens(tiny.prompt)  # holds the image placeholder


def test_weights_are_the_bridges(tl: tuple[HookedVLM, Any]) -> None:
    model, _ = tl
    bridge = model.bridge
    for name in ("W_U", "W_E", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"):
        assert torch.equal(getattr(model, name), getattr(bridge, name)), name
    assert model.blocks is bridge.blocks and len(model.blocks) == model.cfg.n_layers
    head = model.hf_model.get_output_embeddings().weight
    assert torch.equal(model.W_U, head.T)
    with pytest.raises(AttributeError, match="W_pos"):
        model.W_pos  # noqa: B018 - rotary models have no learned positions
    with pytest.raises(AttributeError, match="no_such_thing"):
        model.no_such_thing  # noqa: B018
    assert "W_U" in BRIDGE_ATTRIBUTES


def test_generate_return_type_str(tl: tuple[HookedVLM, Any]) -> None:
    model, tiny = tl
    images = [sample_image(seed=i, size=tiny.image_size) for i in range(2)]
    batch = model.prepare(images=images, text=[tiny.prompt, tiny.prompt + " more"])
    tokens = model.generate(batch, max_new_tokens=3)
    texts = model.generate(batch, max_new_tokens=3, return_type="str")
    new = tokens[:, batch.input_ids.shape[1] :]
    tok = tiny.processor.tokenizer
    assert texts == [tok.decode(r, skip_special_tokens=True) for r in new.tolist()]


@pytest.mark.bad_input_types
def test_generate_unknown_return_type(tl: tuple[HookedVLM, Any]) -> None:
    model, tiny = tl
    batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    with pytest.raises(VLMInputError, match="return_type"):
        model.generate(batch, max_new_tokens=1, return_type="logits")  # type: ignore[arg-type]

"""Chameleon-30B and Janus-Pro-7B are the classes of today's Chameleon and Janus families: the
same adapters wrap them exactly at their released configs' shapes.

Each model here has the released decoder's per-layer shapes (hidden size, heads, key-value
heads, FFN width, Chameleon-30B's swin-norm layout; Janus-Pro's SigLIP-L/16 tower at 384 px,
576 image tokens) with random weights, one decoder layer (one vision layer for Janus), and the
tiny in-memory tokenizer's vocabulary. The shape values are those of the released
``config.json`` files (``facebook/chameleon-30b``, ``deepseek-ai/Janus-Pro-7B``); the expected
values of every check are computed by Hugging Face on the same model before it is wrapped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from vlm_lens import HookedVLM
from vlm_lens.testing import TinyVLM, sample_image, tiny_chameleon, tiny_janus

CHAMELEON_30B = {
    "hidden_size": 8192,
    "intermediate_size": 22016,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "num_hidden_layers": 1,  # 48 in the release
}
JANUS_PRO_7B_TEXT = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "num_hidden_layers": 1,  # 30 in the release
}
JANUS_PRO_VISION = {  # SigLIP-L/16 at 384 px (HF's JanusVisionConfig defaults)
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "mlp_ratio": 4.0,
    "image_size": 384,
    "patch_size": 16,
    "num_hidden_layers": 1,  # 24 in the release
}

BUILDS = {
    "chameleon-30b": lambda: tiny_chameleon(swin_norm=True, text_config=CHAMELEON_30B),
    "janus-pro-7b": lambda: tiny_janus(
        text_config=JANUS_PRO_7B_TEXT, vision_config=JANUS_PRO_VISION
    ),
}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def released(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The model at released shapes, HF's logits (eager and SDPA) taken before wrapping, and
    the wrapped model."""
    tiny: TinyVLM = BUILDS[request.param]()
    image = sample_image(size=tiny.image_size)
    inputs = tiny.processor(images=image, text=tiny.prompt, return_tensors="pt")
    expected = {}
    with torch.no_grad():
        for implementation in ("eager", "sdpa"):
            tiny.model.set_attn_implementation(implementation)
            expected[implementation] = tiny.model(**inputs).logits
    tiny.model.set_attn_implementation("eager")
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    yield {"name": request.param, "tiny": tiny, "model": model, "image": image, "hf": expected}
    del model, tiny


def test_config_shapes_reach_the_bridge(released: dict[str, Any]) -> None:
    cfg, config = released["model"].cfg, released["tiny"].model.config.get_text_config()
    assert cfg.d_model == config.hidden_size
    assert cfg.n_heads == config.num_attention_heads
    assert (cfg.n_key_value_heads or cfg.n_heads) == config.num_key_value_heads
    assert cfg.d_head == config.hidden_size // config.num_attention_heads
    assert cfg.d_mlp == config.intermediate_size


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_logits_equal_hugging_face(released: dict[str, Any], implementation: str) -> None:
    model, tiny = released["model"], released["tiny"]
    model.set_attn_implementation(implementation)
    try:
        batch = model.prepare(images=released["image"], text=tiny.prompt)
        with torch.no_grad():
            logits = model(batch)
    finally:
        model.set_attn_implementation("eager")
    expected = released["hf"][implementation]
    assert torch.isfinite(expected[expected > torch.finfo(expected.dtype).min]).all()
    assert torch.equal(logits, expected)


def test_one_image_span_and_its_gate(released: dict[str, Any]) -> None:
    model, tiny = released["model"], released["tiny"]
    batch = model.prepare(images=released["image"], text=tiny.prompt)
    ids = batch.input_ids[0]
    placeholder = tiny.tokenizer.image_token_id
    span = (ids == placeholder).nonzero().flatten()
    assert batch.layout.positions("image")[0].tolist() == span.tolist()
    assert len(span) == model.adapter.expected_tokens_per_image(batch.inputs, 0)
    gate = int(span[-1]) + 1
    assert batch.layout.positions("gate")[0].tolist() == [gate]
    assert tiny.tokenizer.convert_ids_to_tokens(int(ids[gate])) == tiny.tokenizer.eoi_token

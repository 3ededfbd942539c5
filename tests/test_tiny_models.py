"""Tests for ``vlm_lens.testing.tiny_models``: tiny offline VLM builders."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModelForImageTextToText

from vlm_lens.adapters import adapter_class_for
from vlm_lens.testing import (
    LLAVA_TEXT_BACKBONES,
    TINY_FAMILIES,
    TinyVLM,
    build_tiny,
    sample_image,
    save_tiny,
    tiny_chameleon,
    tiny_families,
    tiny_janus,
    tiny_llava,
)

# (placeholder token, token right after the image span) per family
SPAN_TOKENS = {
    "chameleon": ("<image>", "<eoss>"),
    "emu3": ("<image>", "<|extra_201|>"),
    "janus": ("<image_placeholder>", "<end_of_image>"),
    "llava": ("<image>", "Ċ"),
}
IMAGE_POSITIONS = {"chameleon": 16, "emu3": 8, "janus": 16, "llava": 16}
PROCESSOR_CLASSES = {
    "chameleon": "ChameleonProcessor",
    "emu3": "Emu3Processor",
    "janus": "JanusProcessor",
    "llava": "LlavaProcessor",
}


# The four first families: the per-family facts above are written for them; every registered
# family is checked by the contract suite and by the determinism test below.
FIRST_FAMILIES = ("chameleon", "emu3", "janus", "llava")


@pytest.fixture(scope="module", params=FIRST_FAMILIES)
def tiny(request: pytest.FixtureRequest) -> TinyVLM:
    return build_tiny(request.param)


def _forward(tiny: TinyVLM, inputs=None, **kwargs) -> torch.Tensor:
    inputs = tiny.sample_inputs() if inputs is None else inputs
    with torch.no_grad():
        return tiny.model(**inputs, **kwargs).logits


def _language_model(model: torch.nn.Module) -> torch.nn.Module:
    inner = model.model
    for name in ("language_model", "text_model"):
        if hasattr(inner, name):
            return getattr(inner, name)
    return inner  # Chameleon: the decoder lives directly on model.model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# Building and running
# ------------------------------------------------------------------------------------------------


def test_families_and_dispatch() -> None:
    assert tiny_families() == TINY_FAMILIES
    assert set(FIRST_FAMILIES) <= set(TINY_FAMILIES)
    with pytest.raises(ValueError, match=", ".join(tiny_families())):
        build_tiny("no_such_family")


def test_builds_with_expected_shape(tiny: TinyVLM) -> None:
    model = tiny.model
    assert tiny.family in TINY_FAMILIES
    assert not model.training
    assert model.config._attn_implementation == "eager"
    assert model.config.architectures == [type(model).__name__]
    assert type(tiny.processor).__name__ == PROCESSOR_CLASSES[tiny.family]
    assert "Pil" in type(tiny.processor.image_processor).__name__ or tiny.family == "emu3"
    assert tiny.processor.tokenizer is tiny.tokenizer
    assert tiny.tokenizer.pad_token_id is not None
    text_config = model.config.get_text_config()
    assert text_config.hidden_size == 32
    assert text_config.num_hidden_layers == 2
    assert text_config.num_attention_heads == 4
    assert text_config.num_key_value_heads == 2
    assert text_config.intermediate_size == 64
    assert text_config.vocab_size == len(tiny.tokenizer)
    assert model.get_input_embeddings().weight.shape == (len(tiny.tokenizer), 32)


def test_forward_on_processor_outputs(tiny: TinyVLM) -> None:
    image = sample_image(size=tiny.image_size)
    assert image.size == tiny.image_size[::-1]  # PIL size is (width, height)
    inputs = tiny.processor(images=image, text=tiny.prompt, return_tensors="pt")
    assert "pixel_values" in inputs
    with torch.no_grad():
        out = tiny.model(**inputs, output_attentions=True, output_hidden_states=True)
    seq = inputs["input_ids"].shape[1]
    assert out.logits.shape == (1, seq, len(tiny.tokenizer))
    assert len(out.attentions) == 2 and out.attentions[0].shape == (1, 4, seq, seq)
    assert len(out.hidden_states) == 3
    assert torch.isfinite(out.logits[out.logits > torch.finfo(out.logits.dtype).min]).all()

    placeholder, after = SPAN_TOKENS[tiny.family]
    placeholder_id = tiny.tokenizer.convert_tokens_to_ids(placeholder)
    assert placeholder_id == tiny.model.config.image_token_id
    ids = inputs["input_ids"][0].tolist()
    positions = [i for i, t in enumerate(ids) if t == placeholder_id]
    assert len(positions) == IMAGE_POSITIONS[tiny.family]
    assert positions == list(range(positions[0], positions[-1] + 1))
    assert tiny.tokenizer.convert_ids_to_tokens(ids[positions[-1] + 1]) == after


def test_logits_depend_on_image(tiny: TinyVLM) -> None:
    a = _forward(tiny, tiny.sample_inputs(seed=0))
    b = _forward(tiny, tiny.sample_inputs(seed=1))
    assert not torch.equal(a, b)


def test_logits_are_not_nearly_uniform(tiny: TinyVLM) -> None:
    logits = _forward(tiny)[0, -1]
    logits = logits[logits > torch.finfo(logits.dtype).min]  # Chameleon masks image codes
    assert logits.std() > 0.3


def test_batch_padding(tiny: TinyVLM) -> None:
    prompts = [tiny.prompt, tiny.prompt.replace("What is in", "Describe briefly what is in")]
    images = [sample_image(0, tiny.image_size), sample_image(1, tiny.image_size)]
    inputs = tiny.processor(images=images, text=prompts, padding=True, return_tensors="pt")
    mask = inputs["attention_mask"]
    assert mask.shape[0] == 2 and not mask.all()
    pad_id = tiny.tokenizer.pad_token_id
    short = int(mask.sum(-1).argmin())
    if tiny.family == "janus":  # JanusProcessor pads on the left by default
        assert inputs["input_ids"][short, 0] == pad_id
    else:
        assert inputs["input_ids"][short, -1] == pad_id
    logits = _forward(tiny, inputs)
    assert logits.shape[:2] == inputs["input_ids"].shape


# ------------------------------------------------------------------------------------------------
# Determinism and randomised weights
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_same_seed_same_weights(family: str) -> None:
    a = _state(build_tiny(family, seed=3).model)
    b = _state(build_tiny(family, seed=3).model)
    c = _state(build_tiny(family, seed=4).model)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # every language-model tensor differs between seeds, and so does the vision/VQ side
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])
    differing = [k for k in a if not torch.equal(a[k], c[k])]
    assert any(k.startswith("lm_head") for k in differing)
    assert any("vqmodel" in k or "vision" in k or "visual" in k for k in differing)


def test_building_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny("llava")
    assert torch.equal(torch.rand(3), expected)


def test_language_model_fully_randomised(tiny: TinyVLM) -> None:
    lm = _language_model(tiny.model)
    for name, param in [*lm.named_parameters(), *tiny.model.lm_head.named_parameters()]:
        if "vqmodel" in name:
            continue
        flat = param.detach().flatten()
        assert not torch.all(flat == flat[0]), f"{name} is constant"
        if "norm" not in name and name.endswith("weight") and param.dim() == 2:
            assert 0.1 < flat.std() < 0.3, name


def test_norm_weights_are_not_ones(tiny: TinyVLM) -> None:
    norms = {
        name: module
        for name, module in tiny.model.named_modules()
        if "norm" in type(module).__name__.lower() and "vqmodel" not in name
    }
    assert norms
    for name, module in norms.items():
        weight = module.weight.detach()
        assert not torch.allclose(weight, torch.ones_like(weight)), name
        if getattr(module, "bias", None) is not None:
            assert not torch.allclose(module.bias, torch.zeros_like(module.bias)), name


def test_chameleon_qk_norms_randomised() -> None:
    attn = tiny_chameleon().model.model.layers[0].self_attn
    assert attn.q_norm.weight.shape == (4, 8)
    assert attn.k_norm.weight.shape == (2, 8)
    for norm in (attn.q_norm, attn.k_norm):
        assert not torch.allclose(norm.weight, torch.ones_like(norm.weight))
        assert not torch.allclose(norm.bias, torch.zeros_like(norm.bias))


def test_chameleon_swin_norm() -> None:
    tiny = tiny_chameleon(swin_norm=True)
    assert tiny.model.config.swin_norm
    assert type(tiny.model.model.layers[0]).__name__ == "ChameleonSwinDecoderLayer"
    assert not torch.equal(_forward(tiny), _forward(tiny_chameleon()))


def test_janus_tied_by_default() -> None:
    model = tiny_janus().model
    embed = model.model.language_model.embed_tokens.weight
    assert model.lm_head.weight is embed
    assert not torch.allclose(embed, torch.zeros_like(embed))
    assert model.generation_config.generation_kwargs == {"boi_token_id": 260}


def test_janus_untied() -> None:
    model = tiny_janus(tie_word_embeddings=False).model
    embed = model.model.language_model.embed_tokens.weight
    assert model.lm_head.weight is not embed
    assert model.lm_head.weight.data_ptr() != embed.data_ptr()
    assert not torch.equal(model.lm_head.weight, embed)


@pytest.mark.parametrize("backbone", LLAVA_TEXT_BACKBONES)
def test_llava_text_backbones(backbone: str) -> None:
    tiny = tiny_llava(text_backbone=backbone)
    assert tiny.model.config.text_config.model_type == backbone
    assert type(tiny.model.model.language_model).__name__.lower().startswith(backbone)
    assert _forward(tiny).shape[-1] == len(tiny.tokenizer)


def test_llava_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="qwen2"):
        tiny_llava(text_backbone="gpt2")


# ------------------------------------------------------------------------------------------------
# dtype and save/load
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_bf16(family: str) -> None:
    tiny = build_tiny(family, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in tiny.model.parameters())
    inputs = tiny.sample_inputs()
    assert inputs["pixel_values"].dtype == torch.bfloat16
    logits = _forward(tiny, inputs)
    assert logits.dtype == torch.bfloat16
    full = build_tiny(family)
    rounded = full.model.state_dict()
    for name, value in tiny.model.state_dict().items():
        expected = rounded[name].to(torch.bfloat16) if value.is_floating_point() else rounded[name]
        assert torch.equal(value, expected), name
    reference = _forward(full)
    visible = reference > torch.finfo(reference.dtype).min
    assert torch.allclose(logits.float()[visible], reference[visible], atol=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_save_round_trip_offline(
    family: str, dtype: torch.dtype, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tiny = build_tiny(family, seed=7, dtype=dtype)
    path = save_tiny(tiny, tmp_path / family)
    assert path == tmp_path / family and (path / "config.json").is_file()

    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager")
    # the family's loader: AutoProcessor, or one that needs no torchvision (Pixtral)
    processor = adapter_class_for(model).load_processor(path)
    assert type(model) is type(tiny.model)
    assert type(processor) is type(tiny.processor)
    assert not model.training
    assert model.dtype == dtype

    image = sample_image(size=tiny.image_size)
    ours = tiny.processor(images=image, text=tiny.prompt, return_tensors="pt").to(dtype)
    theirs = processor(images=image, text=tiny.prompt, return_tensors="pt").to(dtype)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.no_grad():
        reloaded = model(**theirs).logits
    assert torch.equal(reloaded, _forward(tiny, ours))
    if family == "janus":
        assert model.lm_head.weight is model.model.language_model.embed_tokens.weight

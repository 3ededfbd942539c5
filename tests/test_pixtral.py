"""What only Pixtral and Mistral 3 have: images of different sizes in one batch (their spans
differ in rows and columns), row ends that carry no image features, and a Hugging Face class
(``LlavaForConditionalGeneration``) shared with another family, told apart by its vision tower.

Every expectation is computed by Hugging Face on the unwrapped model, or read from the ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from tests.conftest import Wrapped, wrap_variant
from tests.contract._reference import on_sdpa
from vlm_lens import HookedVLM, UnsupportedModelError, VLMInputError, hooks
from vlm_lens.adapters import LlavaAdapter, PixtralAdapter, adapter_class_for
from vlm_lens.interventions import ablate_image_tokens
from vlm_lens.testing import sample_image, save_tiny, tiny_llava, tiny_variant

SIZES = ((16, 24), (32, 16), (8, 32))  # wide, tall, one row of merged patches for Mistral 3


@pytest.fixture(scope="module", params=["pixtral", "mistral3"])
def w(request: pytest.FixtureRequest) -> Wrapped:
    return wrap_variant(tiny_variant(request.param))


def _mixed(w: Wrapped, side: str):
    """Three prompts of different lengths, each with an image of another size."""
    images = [sample_image(i, size) for i, size in enumerate(SIZES)]
    texts = [w.tiny.prompt + " more" * i for i in range(3)]
    return w.model.prepare(images=images, text=texts, padding_side=side)


@pytest.mark.parametrize("side", ["left", "right"])
def test_mixed_sizes_logits_equal_hf(w: Wrapped, side: str) -> None:
    batch = _mixed(w, side)
    lengths = [s[0].length for s in batch.layout.spans]
    assert len(set(lengths)) == 3  # the spans really differ
    for b, spans in enumerate(batch.layout.spans):  # one row end per row but the last
        ids = batch.input_ids[b, spans[0].start : spans[0].end + 1]
        row_end = w.tiny.tokenizer.convert_tokens_to_ids("[IMG_BREAK]")
        ends = batch.layout.positions("image_row_end")[b] - spans[0].start
        assert ends.tolist() == (ids == row_end).nonzero().flatten().tolist()
    with torch.no_grad():
        assert torch.equal(w.model(batch), w.reference(**batch.inputs).logits)
        with on_sdpa(w) as reference:
            assert torch.equal(w.model(batch), reference(**batch.inputs).logits)


def test_mixed_sizes_image_embeds_and_ablation(w: Wrapped) -> None:
    """`hook_image_embeds` holds each sequence's features (as many as its placeholders); an
    ablation of image tokens equals the HF model run on hand-edited ``inputs_embeds``."""
    batch = _mixed(w, "right")
    placeholder = batch.input_ids == w.model.adapter.placeholder_token_id
    with torch.no_grad():
        _, cache = w.model.run_with_cache(batch, names_filter=hooks.IMAGE_EMBEDS)
        decoder_input = w.reference(**batch.inputs, output_hidden_states=True).hidden_states[0]
    features = cache[hooks.IMAGE_EMBEDS]
    assert features.shape[1] == int(placeholder.sum(1).max())
    for b in range(3):
        n = int(placeholder[b].sum())
        assert torch.equal(features[b, :n], decoder_input[b][placeholder[b]])
    chosen = torch.zeros_like(placeholder)
    for b in range(3):
        image = batch.layout.positions("image")[b]
        chosen[b, image[[0, -1]]] = True  # first and last image token (after the row ends)
    embeds = decoder_input.clone()
    embeds[chosen] = 0.0
    others = {k: v for k, v in batch.inputs.items() if k not in ("input_ids", "pixel_values")}
    others.pop("image_sizes")
    with torch.no_grad():
        ours = w.model.run_with_hooks(batch, fwd_hooks=ablate_image_tokens(batch, chosen))
        expected = w.reference(inputs_embeds=embeds, **others).logits
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    with pytest.raises(VLMInputError, match="image_row_end"):
        w.model.run_with_hooks(
            batch, fwd_hooks=ablate_image_tokens(batch, batch.layout.mask("image_row_end"))
        )


def test_check_inputs_counts_rows_and_columns(w: Wrapped) -> None:
    """A span one row end short of what `image_sizes` gives is refused."""
    batch = _mixed(w, "right")
    inputs = dict(batch.inputs)
    sizes = inputs["image_sizes"].clone()
    sizes[0, 0] += w.model.adapter.config.vision_config.patch_size * getattr(
        w.model.adapter.config, "spatial_merge_size", 1
    )
    inputs["image_sizes"] = sizes
    with pytest.raises(VLMInputError, match="image 0"):
        w.model.batch_from_inputs(inputs)


def _llava_with_tower(model_type: str) -> torch.nn.Module:
    """A LLaVA of the tiny LLaVA's text model with a tiny tower of another `model_type`."""
    text = tiny_llava().model.config.text_config.to_dict()
    vision = {"model_type": model_type, "hidden_size": 32, "num_hidden_layers": 1}
    vision |= {"num_attention_heads": 4, "intermediate_size": 64, "image_size": 16}
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=4)
    return LlavaForConditionalGeneration(config).eval()


def test_llava_class_dispatches_by_vision_tower() -> None:
    assert adapter_class_for(tiny_llava().model) is LlavaAdapter
    assert adapter_class_for(tiny_variant("pixtral").build().model) is PixtralAdapter
    with pytest.raises(UnsupportedModelError) as error:
        HookedVLM.from_hf(_llava_with_tower("dinov2"))
    message = str(error.value)
    for part in ("LlavaForConditionalGeneration", "'dinov2'", "clip_vision_model", "pixtral"):
        assert part in message, (part, message)


def test_from_pretrained_refuses_unknown_tower_before_loading(tmp_path: Path) -> None:
    folder = save_tiny(tiny_variant("pixtral").build(), tmp_path / "pixtral")
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["vision_config"]["model_type"] = "siglip2_vision_model"
    config_file.write_text(json.dumps(config))
    (folder / "model.safetensors").unlink()  # loading weights would fail differently
    with pytest.raises(UnsupportedModelError, match="siglip2_vision_model"):
        HookedVLM.from_pretrained(folder)

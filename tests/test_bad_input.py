"""Bad inputs raise `VLMInputError` / `UnsupportedModelError` naming the problem and the fix.

Every family is covered through the ``wrapped`` fixture of conftest.py (one tiny model per
family, built once per module). Hooks must never outlive an exception.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from conftest import Wrapped

from vlm_lens import Batch, HookedVLM, UnsupportedModelError, VLMInputError, hooks
from vlm_lens.testing import sample_image, save_tiny

VLM_CLASSES = (
    "ChameleonForConditionalGeneration",
    "Emu3ForConditionalGeneration",
    "JanusForConditionalGeneration",
    "LlavaForConditionalGeneration",
)


def message_of(exc: type[Exception], call: Callable[[], Any], *words: str) -> str:
    """Run `call`, expect `exc`, check that its message holds every one of `words`."""
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for word in words:
        assert word in msg, f"{word!r} not in message: {msg}"
    return msg


def has_number(msg: str, number: int, noun: str) -> bool:
    """Whether `msg` says "<number> <noun>" (e.g. ``2 image(s)``)."""
    return re.search(rf"\b{number} {re.escape(noun)}", msg) is not None


def image(w: Wrapped, seed: int = 0) -> Any:
    return sample_image(seed, w.tiny.image_size)


def one_image_batch(w: Wrapped) -> Batch:
    return w.model.prepare(images=image(w), text=w.tiny.prompt)


def n_placeholders(w: Wrapped, batch: Batch) -> int:
    return int((batch.input_ids == w.model.adapter.placeholder_token_id).sum())


def text_only_llama() -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return transformers.LlamaForCausalLM(config)


# ------------------------------------------------------------------------------------------------
# prepare: placeholders and image counts
# ------------------------------------------------------------------------------------------------


def test_prompt_without_placeholder(wrapped: Wrapped) -> None:
    model = wrapped.model
    ph = model.image_placeholder
    msg = message_of(
        VLMInputError,
        lambda: model.prepare(images=image(wrapped), text="no placeholder"),
        repr(ph),
        "no image placeholder",
        "where each image goes",
        "'no placeholder'",
    )
    assert has_number(msg, 1, "image")
    # a batch: the message names the prompt at fault
    texts = [wrapped.tiny.prompt, "second prompt"]
    message_of(
        VLMInputError,
        lambda: model.prepare(images=[image(wrapped), image(wrapped, 1)], text=texts),
        "prompt 1",
        repr(ph),
    )


def test_two_placeholders_one_image(wrapped: Wrapped) -> None:
    ph = wrapped.model.image_placeholder
    msg = message_of(
        VLMInputError,
        lambda: wrapped.model.prepare(images=image(wrapped), text=f"A {ph} and B {ph}"),
        repr(ph),
        "per image",
    )
    assert has_number(msg, 2, "image placeholder")
    assert has_number(msg, 1, "image(s)")


def test_one_placeholder_two_images(wrapped: Wrapped) -> None:
    ph = wrapped.model.image_placeholder
    images = [image(wrapped), image(wrapped, 1)]
    for given in (images, [images]):  # a flat list for one prompt, or a list of lists
        msg = message_of(
            VLMInputError,
            lambda given=given: wrapped.model.prepare(images=given, text=f"Look {ph} here"),
            repr(ph),
            "per image",
        )
        assert has_number(msg, 1, "image placeholder")
        assert has_number(msg, 2, "image(s)")


def test_placeholder_without_any_image(wrapped: Wrapped) -> None:
    ph = wrapped.model.image_placeholder
    msg = message_of(
        VLMInputError, lambda: wrapped.model.prepare(images=None, text=f"Look {ph} here"), repr(ph)
    )
    assert has_number(msg, 1, "image placeholder")
    assert has_number(msg, 0, "image(s)")


def test_three_images_for_two_prompts(wrapped: Wrapped) -> None:
    prompts = [wrapped.tiny.prompt, wrapped.tiny.prompt + " Why?"]
    images = [image(wrapped, i) for i in range(3)]
    msg = message_of(
        VLMInputError,
        lambda: wrapped.model.prepare(images=images, text=prompts),
        "one image per prompt",
        "list of image lists",
    )
    assert has_number(msg, 3, "images")
    assert has_number(msg, 2, "prompts")
    msg = message_of(
        VLMInputError,
        lambda: wrapped.model.prepare(images=[[im] for im in images], text=prompts),
        "one list of images per prompt",
    )
    assert has_number(msg, 3, "image lists")
    assert has_number(msg, 2, "prompts")


def test_lists_of_images_per_prompt_must_match_each_prompt(wrapped: Wrapped) -> None:
    prompts = [wrapped.tiny.prompt, wrapped.tiny.prompt + " Why?"]
    images = [[image(wrapped), image(wrapped, 1)], [image(wrapped, 2)]]
    msg = message_of(
        VLMInputError, lambda: wrapped.model.prepare(images=images, text=prompts), "prompt 0"
    )
    assert has_number(msg, 2, "image(s)")


def test_empty_text_and_bad_arrays(wrapped: Wrapped) -> None:
    message_of(VLMInputError, lambda: wrapped.model.prepare(text=[]), "text is empty")
    bad = np.zeros((*wrapped.tiny.image_size, 5), dtype=np.uint8)
    message_of(
        VLMInputError,
        lambda: wrapped.model.prepare(images=bad, text=wrapped.tiny.prompt),
        "[H, W, 3]",
        str(bad.shape),
    )


@pytest.mark.bad_input_types
@pytest.mark.parametrize(
    "bad",
    [lambda w: "cat.png", lambda w: torch.randint(0, 256, (*w.tiny.image_size, 3))],
    ids=["path-string", "torch-tensor"],
)
def test_image_of_wrong_type_names_the_type(
    wrapped: Wrapped, bad: Callable[[Wrapped], Any]
) -> None:
    images = bad(wrapped)
    message_of(
        VLMInputError,
        lambda: wrapped.model.prepare(images=images, text=wrapped.tiny.prompt),
        "PIL",
        type(images).__name__,
    )


# ------------------------------------------------------------------------------------------------
# dicts and hand-edited batches
# ------------------------------------------------------------------------------------------------

ENTRY_POINTS: dict[str, Callable[[HookedVLM, Any], Any]] = {
    "forward": lambda m, b: m(b),
    "run_with_cache": lambda m, b: m.run_with_cache(b),
    "run_with_hooks": lambda m, b: m.run_with_hooks(b, fwd_hooks=[]),
    "generate": lambda m, b: m.generate(b, max_new_tokens=1),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_placeholders_without_pixel_values(wrapped: Wrapped, entry: str) -> None:
    inputs = dict(one_image_batch(wrapped).inputs)
    del inputs["pixel_values"]
    msg = message_of(
        VLMInputError,
        lambda: ENTRY_POINTS[entry](wrapped.model, inputs),
        "no pixel_values",
        "model.prepare(images=..., text=...)",
    )
    assert has_number(msg, 1, "image placeholder span")


def test_pixel_values_without_placeholders(wrapped: Wrapped) -> None:
    ph = wrapped.model.image_placeholder
    with_image = one_image_batch(wrapped)
    inputs = dict(wrapped.model.prepare(text="Describe the scene.").inputs)
    for key in wrapped.model.adapter.image_input_keys:
        inputs[key] = with_image.inputs[key]
    msg = message_of(
        VLMInputError,
        lambda: wrapped.model(inputs),
        "no image placeholder",
        repr(ph),
        "model.prepare",
    )
    adapter = wrapped.model.adapter  # pixel_values rows: images, or tiles (InternVL)
    assert has_number(msg, adapter.count_images(inputs), f"{adapter.pixel_rows}(s)")


def test_more_pixel_values_than_image_spans(wrapped: Wrapped) -> None:
    batch = one_image_batch(wrapped)
    inputs = dict(batch.inputs)
    for key in wrapped.model.adapter.image_input_keys:
        inputs[key] = torch.cat([inputs[key], inputs[key]])
    msg = message_of(
        VLMInputError, lambda: wrapped.model(inputs), repr(wrapped.model.image_placeholder)
    )
    adapter = wrapped.model.adapter  # pixel_values rows: images, or tiles (InternVL)
    assert has_number(msg, adapter.count_images(inputs), f"{adapter.pixel_rows}(s)")
    assert has_number(msg, 1, "image placeholder span")


def test_span_shorter_than_its_image(wrapped: Wrapped) -> None:
    batch = one_image_batch(wrapped)
    # the span: the placeholders and the row ends between them (Pixtral's [IMG_BREAK])
    spec = wrapped.model.adapter.token_spec
    row_ends = torch.isin(batch.input_ids, torch.tensor(sorted(spec.row_end_token_ids)))
    n = n_placeholders(wrapped, batch) + int(row_ends.sum())
    placeholder = wrapped.model.adapter.placeholder_token_id
    drop = int((batch.input_ids[0] == placeholder).nonzero().flatten()[-1])
    keep = [p for p in range(batch.input_ids.shape[1]) if p != drop]
    inputs = dict(batch.inputs)
    inputs["input_ids"] = batch.input_ids[:, keep]
    inputs["attention_mask"] = batch.inputs["attention_mask"][:, keep]
    msg = message_of(VLMInputError, lambda: wrapped.model(inputs), "model.prepare")
    assert has_number(msg, n - 1, "image-span positions")
    assert has_number(msg, n, "tokens")


@pytest.mark.parametrize("counts", [(2,), (0,), (1, 1)])
def test_hand_edited_images_per_sequence(wrapped: Wrapped, counts: tuple[int, ...]) -> None:
    bad = dataclasses.replace(one_image_batch(wrapped), images_per_sequence=counts)
    message_of(
        VLMInputError,
        lambda: wrapped.model(bad),
        str(list(counts)),
        "[1]",
        repr(wrapped.model.image_placeholder),
    )


def test_layout_of_another_batch(wrapped: Wrapped) -> None:
    batch = one_image_batch(wrapped)
    other = wrapped.batch(n_prompts=2)
    bad = dataclasses.replace(batch, layout=other.layout)
    message_of(
        VLMInputError,
        lambda: wrapped.model(bad),
        str(other.layout.shape),
        str(tuple(batch.input_ids.shape)),
        "model.prepare",
    )


def test_image_input_passed_twice(wrapped: Wrapped) -> None:
    batch = one_image_batch(wrapped)
    message_of(
        VLMInputError,
        lambda: wrapped.model(batch, pixel_values=batch.inputs["pixel_values"]),
        "'pixel_values'",
        "already",
    )


@pytest.mark.bad_input_types
@pytest.mark.parametrize(
    "bad",
    [lambda b: b.input_ids, lambda b: [b.input_ids], lambda b: "USER: hi"],
    ids=["tensor", "list", "str"],
)
def test_input_that_is_neither_batch_nor_dict(
    wrapped: Wrapped, bad: Callable[[Batch], Any]
) -> None:
    value = bad(one_image_batch(wrapped))
    message_of(
        VLMInputError,
        lambda: wrapped.model(value),
        "Batch",
        "model.prepare",
        type(value).__name__,
        "batch_from_inputs",
    )


def test_dict_without_input_ids(wrapped: Wrapped) -> None:
    inputs = dict(one_image_batch(wrapped).inputs)
    del inputs["input_ids"]
    message_of(VLMInputError, lambda: wrapped.model(inputs), "'input_ids'")


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_inputs_on_another_device(wrapped: Wrapped, entry: str) -> None:
    batch = one_image_batch(wrapped).to("meta")
    message_of(
        VLMInputError,
        lambda: ENTRY_POINTS[entry](wrapped.model, batch),
        "meta",
        str(wrapped.model.device),
        "batch.to(model.device)",
    )


def test_prepare_without_processor(wrapped: Wrapped) -> None:
    bare = HookedVLM.from_hf(wrapped.tiny.model)
    assert bare.processor is None
    message_of(
        VLMInputError,
        lambda: bare.prepare(images=image(wrapped), text=wrapped.tiny.prompt),
        "processor",
        "batch_from_inputs",
        "HookedVLM.from_hf(model, processor)",
    )
    batch = one_image_batch(wrapped)
    message_of(VLMInputError, lambda: bare.to_str_tokens(batch), "tokenizer", "processor")
    # the fix the message names works, and gives the same logits
    with torch.no_grad():
        assert torch.equal(bare(bare.batch_from_inputs(batch.inputs)), wrapped.model(batch))


# ------------------------------------------------------------------------------------------------
# unsupported models
# ------------------------------------------------------------------------------------------------


def test_text_only_model() -> None:
    msg = message_of(
        UnsupportedModelError,
        lambda: HookedVLM.from_hf(text_only_llama()),
        "LlamaForCausalLM",
        "text-only",
        "TransformerBridge",
        "Supported",
        *VLM_CLASSES,
    )
    assert "CONTRIBUTING" in msg


def test_text_only_model_with_stale_architectures() -> None:
    model = text_only_llama()
    model.config.architectures = ["LlavaForConditionalGeneration"]
    message_of(UnsupportedModelError, lambda: HookedVLM.from_hf(model), "LlamaForCausalLM")


def test_unknown_vlm_architecture(wrapped: Wrapped) -> None:
    base = type(wrapped.tiny.model)
    name = "Custom" + base.__name__
    custom_cls = type(name, (base,), {})
    config = copy.deepcopy(wrapped.tiny.model.config)
    config.architectures = [name]
    model = custom_cls(config)
    msg = message_of(
        UnsupportedModelError,
        lambda: HookedVLM.from_hf(model, wrapped.tiny.processor),
        name,
        "register_family",
        "CONTRIBUTING",
        *VLM_CLASSES,
    )
    assert "text-only" not in msg


@pytest.mark.parametrize(
    "architectures",
    [["Kosmos2ForConditionalGeneration"], ["LlamaForCausalLM"], None],
    ids=["other-vlm", "text-only", "missing"],
)
def test_from_pretrained_unsupported_raises_before_loading_weights(
    wrapped: Wrapped,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    architectures: list[str] | None,
) -> None:
    folder = save_tiny(wrapped.tiny, tmp_path / "tiny")
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    assert config["architectures"] == [type(wrapped.tiny.model).__name__]
    if architectures is None:
        del config["architectures"]
    else:
        config["architectures"] = architectures
    config_file.write_text(json.dumps(config))
    # loading weights would fail loudly: they are gone, and from_pretrained is booby-trapped
    for weights in folder.glob("*.safetensors"):
        weights.unlink()

    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("weights were loaded before the architecture was checked")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(no_loading))
    message_of(
        UnsupportedModelError,
        lambda: HookedVLM.from_pretrained(folder),
        str(architectures),
        "Supported",
        "CONTRIBUTING",
        *VLM_CLASSES,
    )


# ------------------------------------------------------------------------------------------------
# hooks never outlive an exception
# ------------------------------------------------------------------------------------------------


class HookFailure(Exception):
    """Raised by the test hook."""


def raising_hook(activation: torch.Tensor, hook: Any) -> None:
    raise HookFailure(f"raised in {hook.name}")


def hooked_points(model: HookedVLM) -> list[str]:
    """Names of the hook points that hold any hook (TransformerLens' or torch's own lists)."""
    out = []
    for name, hp in model.hook_dict.items():
        if hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks or hp._backward_hooks:
            out.append(name)
    return out


def run_with_raising_hook(model: HookedVLM, batch: Batch, name: str, how: str) -> None:
    fwd_hooks = [(name, raising_hook)]
    if how == "run_with_hooks":
        model.run_with_hooks(batch, fwd_hooks=fwd_hooks)
    elif how == "hooks-context":
        with model.hooks(fwd_hooks=fwd_hooks):
            model(batch)
    elif how == "generate":
        model.generate(batch, max_new_tokens=2, fwd_hooks=fwd_hooks)
    elif how == "run_with_cache":
        with model.hooks(fwd_hooks=fwd_hooks):
            model.run_with_cache(batch, names_filter=hooks.lm_filter("resid_post"))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["run_with_hooks", "hooks-context", "generate", "run_with_cache"])
@pytest.mark.parametrize(
    "name", [hooks.resid_pre(0), hooks.IMAGE_EMBEDS], ids=["resid_pre0", "image_embeds"]
)
def test_hooks_are_removed_after_an_exception(wrapped: Wrapped, name: str, how: str) -> None:
    model = wrapped.model
    batch = wrapped.batch(n_prompts=2)
    assert hooked_points(model) == []
    with torch.no_grad():
        before = model(batch)
    with pytest.raises(HookFailure), torch.no_grad():
        run_with_raising_hook(model, batch, name, how)
    assert hooked_points(model) == []
    with torch.no_grad():
        after = model(batch)
    assert torch.equal(before, after)

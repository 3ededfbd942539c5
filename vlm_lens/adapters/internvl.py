"""InternVL (``InternVLForConditionalGeneration``, native port: ``OpenGVLab/InternVL3-1B-hf``).

An InternViT tower, a pixel shuffle and an MLP projector feed a Qwen2 (or Llama-like) decoder.
The processor cuts each image into dynamic high-resolution tiles (plus a thumbnail when there is
more than one) and writes ``<img>`` + ``<IMG_CONTEXT>`` x (tokens per tile x tiles) + ``</img>``:
one span per image, ``<img>`` is ``image_start`` and ``</img>`` the gate (also ``image_end``).
The tiles of every image are stacked as rows of ``pixel_values``, so `count_images` counts the
``<img>`` spans, never the rows; a span's length is a multiple of ``image_seq_length``.
TransformerLens 4.3 has no InternVL adapter: `InternVLArchitectureAdapter` is its LLaVA mapping
(the same ``model.language_model``/``model.multi_modal_projector``/``lm_head`` paths) with the
tower wrapped whole.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny
    >>> tiny = build_tiny("internvl")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> spec = model.adapter.token_spec
    >>> model.family, tiny.tokenizer.convert_ids_to_tokens(sorted(spec.image_end_token_ids))
    ('internvl', ['</img>'])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn
from transformer_lens.model_bridge.generalized_components import VisionProjectionBridge
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.supported_architectures.llava import LlavaArchitectureAdapter

from vlm_lens.adapters.base import VLMAdapter
from vlm_lens.errors import VLMInputError
from vlm_lens.layout import TokenLayout, TokenSpec
from vlm_lens.processors import internvl_processor_class


class InternVLArchitectureAdapter(LlavaArchitectureAdapter):
    """TransformerLens adapter for ``InternVLForConditionalGeneration``: the LLaVA language-model
    mapping (Qwen2's q/k/v biases live in the wrapped HF linears), the InternViT tower wrapped
    opaquely (``vision_encoder.hook_in``/``hook_out``) and the projector as ``vision_projector``."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        mapping = self.component_mapping
        assert mapping is not None, "LlavaArchitectureAdapter sets component_mapping"
        mapping["vision_encoder"] = GeneralizedComponent(name="model.vision_tower", config=self.cfg)
        mapping["vision_projector"] = VisionProjectionBridge(name="model.multi_modal_projector")


class InternVLAdapter(VLMAdapter):
    """InternVL 2.5 / 3 / 3.5 in transformers' native format (``*-hf`` checkpoints)."""

    family = "internvl"
    architectures = ("InternVLForConditionalGeneration",)
    tl_architecture_adapter = InternVLArchitectureAdapter
    default_placeholder = "<IMG_CONTEXT>"

    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        config: Any = model.config
        placeholder = int(config.image_token_id)
        bos = getattr(config.text_config, "bos_token_id", None)
        return TokenSpec(
            image_token_ids=frozenset({placeholder}),
            image_start_token_ids=self.ids(self.tokenizer_token("start_image_token") or "<img>"),
            image_end_token_ids=self.ids(self.tokenizer_token("end_image_token") or "</img>"),
            bos_token_ids=frozenset() if bos is None else frozenset({int(bos)}),
            placeholder_token_id=placeholder,
            delimited=True,  # <img> ... </img>, even when the ids are unknown (no tokenizer)
        )

    def count_images(self, inputs: Mapping[str, Any]) -> int:
        """Images, not tiles: the ``<img>`` ... ``</img>`` spans of the placeholders (the
        processor does not return the tiles per image), 0 without ``pixel_values``.

        Example:
            >>> from vlm_lens import HookedVLM
            >>> from vlm_lens.testing import build_tiny
            >>> tiny = build_tiny("internvl")
            >>> inputs = tiny.sample_inputs()  # one 32 x 32 image: 4 tiles and a thumbnail
            >>> adapter = HookedVLM.from_hf(tiny.model).adapter
            >>> adapter.count_images(inputs), len(inputs["pixel_values"])
            (1, 5)
        """
        if inputs.get("pixel_values") is None:
            return 0
        layout = self.layout(inputs["input_ids"], inputs.get("attention_mask"))
        return sum(len(spans) for spans in layout.spans)

    def feature_rows_per_sequence(
        self, inputs: Mapping[str, Any], images_per_sequence: tuple[int, ...]
    ) -> tuple[int, ...]:
        """Tiles per sequence: the features come one row per tile (``image_seq_length`` each)."""
        del images_per_sequence
        layout = self.layout(inputs["input_ids"], inputs.get("attention_mask"))
        per_tile = int(self.config.image_seq_length)
        return tuple(sum(s.length for s in spans) // per_tile for spans in layout.spans)

    def check_inputs(self, inputs: Mapping[str, Any], layout: TokenLayout) -> None:
        """The base checks, then that the spans hold ``image_seq_length`` placeholders per
        ``pixel_values`` row (tile), all images together (tiles per image are not returned)."""
        super().check_inputs(inputs, layout)
        pixels = inputs.get("pixel_values")
        if pixels is None:
            return
        per_tile = int(self.config.image_seq_length)
        total = sum(s.length for spans in layout.spans for s in spans)
        if total != per_tile * int(pixels.shape[0]):
            raise VLMInputError(
                f"the image spans hold {total} placeholders but the {int(pixels.shape[0])} "
                f"pixel_values tiles give {per_tile} each; let the processor expand the "
                "placeholders (model.prepare)."
            )

    @classmethod
    def load_processor(cls, name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
        return internvl_processor_class().from_pretrained(name_or_path, **kwargs)

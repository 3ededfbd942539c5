"""Emu3: VQ codes in rows, each row closed by an end-of-line marker; the gate is end-of-frame.

The span is ``<|image start|>`` ``"H*W"`` ``<|image token|>`` then H rows of W codes plus an EOL
(``image_row_end``), then ``<|extra_201|>`` (end of frame: the gate, also ``image_end``) and
``<|image end|>`` (``image_end``). TransformerLens 4.3 bridges Emu3 natively.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from vlm_lens.adapters.base import VLMAdapter
from vlm_lens.layout import TokenSpec

_EOF = "<|extra_201|>"
_GRID_CHARS = set("0123456789*")


class Emu3Adapter(VLMAdapter):
    """Emu3 (BAAI), understanding path (``Emu3ForConditionalGeneration``)."""

    family = "emu3"
    architectures = ("Emu3ForConditionalGeneration",)
    image_input_keys = ("pixel_values", "image_sizes")

    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        inner: Any = model.model  # Emu3Model
        mapping = inner.vocabulary_mapping
        config: Any = model.config
        vocab: Mapping[str, int] = mapping.vocab_map
        placeholder = int(mapping.image_token_id)
        header = {
            int(i): name for name, i in vocab.items() if name and set(name) <= set("0123456789*")
        }
        eof = self.tokenizer_token("eof_token") or _EOF
        return TokenSpec(
            image_token_ids=frozenset([placeholder, *mapping.image_tokens]),
            row_end_token_ids=frozenset([int(mapping.eol_token_id)]),
            image_start_token_ids=self.ids(
                self.tokenizer_token("boi_token") or "<|image start|>",
                self.tokenizer_token("image_wrapper_token") or "<|image token|>",
            ),
            image_end_token_ids=self.ids(eof, self.tokenizer_token("eoi_token") or "<|image end|>"),
            bos_token_ids=frozenset({int(config.text_config.bos_token_id)}),
            header_text=header,
            placeholder_token_id=placeholder,
        )

    def expected_tokens_per_image(self, inputs: Mapping[str, Any], image: int) -> int | None:
        sizes = inputs.get("image_sizes")
        if sizes is None or image >= len(sizes):
            return None
        height, width = (int(v) for v in sizes[image])
        factor = 8  # Emu3Processor and the VQ model use a spatial factor of 8
        return (height // factor) * (width // factor + 1)

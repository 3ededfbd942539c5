"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``).

An image is split into a grid of tiles plus the whole image as a global tile; the processor
writes ``<fake_token_around_image><row_i_col_j>`` + ``<image>`` x n for each tile, ``\\n`` after
each tile row, then ``\\n<fake_token_around_image><global-img>`` + ``<image>`` x n +
``<fake_token_around_image>``. One span per image, from the first tile's first ``<image>`` to the
global tile's last: the first tile's header is ``image_start``, the later headers ``image_start``
inside the span, the newlines ``image_row_end``, the closing ``<fake_token_around_image>`` the
gate and ``image_end``. ``pixel_values`` is ``[batch, tiles, 3, H, W]``, padded with all-zero
tiles, so the image-count check counts real tiles, as HF's ``get_image_features`` does.
TransformerLens 4.3 bridges Idefics3 (Llama text model); SmolVLM, the same model under another
class name, gets TL's Idefics3 adapter registered for it.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("idefics3")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> batch = model.prepare(images=sample_image(size=(16, 32)), text=tiny.prompt)
    >>> batch.layout.counts()["image"], batch.layout.counts()["image_row_end"]
    ([12], [2])
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from jaxtyping import Int
from torch import Tensor, nn
from transformer_lens.model_bridge.supported_architectures.idefics3 import (
    Idefics3ArchitectureAdapter,
)

from vlm_lens.adapters.base import VLMAdapter
from vlm_lens.layout import TokenLayout, TokenSpec

_FAKE, _GLOBAL = "<fake_token_around_image>", "<global-img>"
_ROW_COL = tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))


class Idefics3Adapter(VLMAdapter):
    """Idefics3; `SmolVLMAdapter` is the same model under SmolVLM's class."""

    family = "idefics3"
    architectures = ("Idefics3ForConditionalGeneration",)
    image_input_keys = ("pixel_values", "pixel_attention_mask")
    pixel_rows = "tile"
    pil_image_processor: ClassVar[str] = "Idefics3ImageProcessorPil"

    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        config: Any = model.config
        breaks: frozenset[int] = frozenset()
        if self.tokenizer is not None:  # "\n" and, where the tokenizer merges them, "\n\n"
            encoded = [self.tokenizer.encode(t, add_special_tokens=False) for t in ("\n", "\n\n")]
            breaks = frozenset(e[0] for e in encoded if len(e) == 1)
        return self._spec(config, self.ids(_FAKE), self.ids(*_ROW_COL), self.ids(_GLOBAL), breaks)

    @staticmethod
    def _spec(
        config: Any, fake: frozenset[int], grid: frozenset[int], last: frozenset[int], breaks: Any
    ) -> TokenSpec:
        bos = getattr(config.text_config, "bos_token_id", None)
        return TokenSpec(
            image_token_ids=frozenset({int(config.image_token_id)}),
            image_start_token_ids=fake | grid | last,
            image_end_token_ids=fake,
            bos_token_ids=frozenset() if bos is None else frozenset({int(bos)}),
            placeholder_token_id=int(config.image_token_id),
            tile_token_ids=fake | grid | last,
            tile_break_token_ids=frozenset(breaks),
            last_tile_token_ids=last,
        )

    @property
    def tile_tokens(self) -> int:
        """Placeholders per tile: ``(image_size // patch_size)**2 // scale_factor**2``."""
        vision = self.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2 // self.config.scale_factor**2

    def layout(
        self, input_ids: Int[Tensor, "*batch pos"], attention_mask: Tensor | None = None
    ) -> TokenLayout:
        """The layout; without a tokenizer the marker ids are read off the ids' structure."""
        spec = self.token_spec if self.tokenizer is not None else self._spec_from_ids(input_ids)
        return TokenLayout.from_input_ids(input_ids, spec, attention_mask)

    def _spec_from_ids(self, input_ids: Tensor) -> TokenSpec:
        """Each tile run follows ``fake, marker``; each image ends with its global tile and
        ``fake``; gaps between tiles that do not start with ``fake`` hold row breaks."""
        fake, grid, last, breaks = set(), set(), set(), set()
        for row in input_ids.reshape(-1, input_ids.shape[-1]).tolist():
            at = [p for p, t in enumerate(row) if t == self.placeholder_token_id]
            starts = [p for p in at if p >= 2 and row[p - 1] != self.placeholder_token_id]
            ends = [p for p in at if p + 1 < len(row) and row[p + 1] != self.placeholder_token_id]
            grid |= {row[p - 1] for p in starts}
            fake |= {row[p - 2] for p in starts}
            last |= {row[starts[-1] - 1]} if starts and ends else set()
            for end, start in zip(ends, starts[1:], strict=False):
                if row[end + 1] not in fake:
                    breaks |= set(row[end + 1 : start - 2])
        grid -= last
        return self._spec(self.config, frozenset(fake), frozenset(grid), frozenset(last), breaks)

    def count_images(self, inputs: Mapping[str, Any]) -> int:
        """Real tiles: the rows of ``pixel_values`` that are not all-zero padding (HF's rule)."""
        return int(self._real_tiles(inputs).sum())

    @staticmethod
    def _real_tiles(inputs: Mapping[str, Any]) -> Tensor:
        pixel_values = inputs.get("pixel_values")
        if pixel_values is None:
            return torch.zeros(0, dtype=torch.long)
        return (pixel_values != 0).flatten(2).any(-1).sum(-1).reshape(-1)

    def feature_groups(self, layout: TokenLayout) -> list[int]:
        """One row per sequence: ``get_image_features`` returns each sequence's tiles as one."""
        return [1] * layout.shape[0]

    def tiles_per_sequence(self, inputs: Mapping[str, Any]) -> list[int]:
        """Each sequence's real tiles (its rows of ``pixel_values``)."""
        return [int(n) for n in self._real_tiles(inputs).tolist()]

    @classmethod
    def load_processor(cls, name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """``Idefics3Processor`` with the family's PIL image processor (the default one needs
        torchvision). SmolVLM's own processor writes the same image prompt but also needs
        ``num2words`` and a video processor, so SmolVLM checkpoints load this one too."""
        import transformers

        module = importlib.import_module(
            f"transformers.models.{cls.family}.image_processing_pil_{cls.family}"
        )
        image_processor = getattr(module, cls.pil_image_processor)
        return transformers.Idefics3Processor(
            image_processor.from_pretrained(name_or_path, **kwargs),
            transformers.AutoTokenizer.from_pretrained(name_or_path, **kwargs),
            image_seq_len=_image_seq_len(name_or_path, **kwargs),
        )


def _image_seq_len(name_or_path: str | os.PathLike[str], **kwargs: Any) -> int:
    """The ``image_seq_len`` a saved processor was built with (from its processor config)."""
    from transformers.processing_utils import ProcessorMixin

    config, _ = ProcessorMixin.get_processor_dict(name_or_path, **kwargs)
    return int(config.get("image_seq_len", 169))


class SmolVLMAdapter(Idefics3Adapter):
    """SmolVLM: Idefics3's model under its own class, bridged by TL's Idefics3 adapter."""

    family = "smolvlm"
    architectures = ("SmolVLMForConditionalGeneration",)
    tl_architecture_adapter: ClassVar[type | None] = Idefics3ArchitectureAdapter
    pil_image_processor = "SmolVLMImageProcessorPil"

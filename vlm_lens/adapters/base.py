"""The family adapter: everything vlm_lens must know about one VLM family, and nothing else.

A `VLMAdapter` subclass says which Hugging Face classes it handles, which TransformerLens
architecture adapter bridges its language model, which token ids mark the image span and the
gate (`TokenSpec`), and where the image features are computed. Shared logic lives here once;
a family file holds only its deltas. See CONTRIBUTING.md, "Adding a model family".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from vlm_lens.errors import VLMInputError
from vlm_lens.layout import TokenLayout, TokenSpec


class VLMAdapter(ABC):
    """Base class of the per-family adapters.

    Subclasses set the class attributes and implement `build_token_spec`; the defaults fit
    models whose inner ``model.model`` has ``get_image_features`` (all four families).

    Attributes:
        family: short lower-case family name (``"chameleon"``).
        architectures: Hugging Face class names this adapter handles.
        image_input_keys: model-input keys that carry the image (always ``pixel_values``; Emu3
            also ``image_sizes``). They are forwarded on every call.
        tl_architecture_adapter: a TransformerLens ``ArchitectureAdapter`` class to register
            for ``architectures`` when TransformerLens has none; ``None`` to use TL's own.
        default_placeholder: the prompt placeholder when the processor does not name one.

    Example:
        >>> from vlm_lens.adapters import supported_families
        >>> "llava" in supported_families()
        True
    """

    family: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]
    image_input_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)
    tl_architecture_adapter: ClassVar[type | None] = None
    default_placeholder: ClassVar[str] = "<image>"

    def __init__(self, model: nn.Module, processor: Any | None = None) -> None:
        self.config: Any = model.config
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", None)
        self.token_spec: TokenSpec = self.build_token_spec(model)

    # ------------------------------------------------------------------ what families define
    @abstractmethod
    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        """The family's `TokenSpec`, from the model config (and the tokenizer when present)."""

    @property
    def architecture(self) -> str:
        """The architecture name the TransformerLens bridge is built with."""
        return self.architectures[0]

    @property
    def placeholder_token_id(self) -> int:
        """Id of the placeholder the model replaces with image features."""
        placeholder = self.token_spec.placeholder_token_id
        if placeholder is None:  # pragma: no cover - every family sets it
            raise NotImplementedError(f"{type(self).__name__} has no placeholder id")
        return placeholder

    @property
    def image_placeholder(self) -> str:
        """The string a user writes in a prompt where an image goes."""
        return getattr(self.processor, "image_token", None) or self.default_placeholder

    def image_features_owner(self, model: nn.Module) -> nn.Module:
        """The module whose ``get_image_features`` computes the features that enter the decoder."""
        return model.model

    def expected_tokens_per_image(self, inputs: Mapping[str, Any], image: int) -> int | None:
        """Span length image number `image` of the batch must have, or ``None`` if unknown."""
        del inputs, image
        return self.token_spec.tokens_per_image

    # ------------------------------------------------------------------ shared behaviour
    def token_id(self, token: str) -> int | None:
        """Id of a token string from the tokenizer, else from the config's vocabulary map."""
        if self.tokenizer is not None:
            tid = self.tokenizer.convert_tokens_to_ids(token)
            unk = getattr(self.tokenizer, "unk_token_id", None)
            if isinstance(tid, int) and (tid != unk or token == self.tokenizer.unk_token):
                return tid
        vocab = getattr(self.config, "vocabulary_map", None) or {}
        return vocab.get(token)

    def ids(self, *tokens: str | None) -> frozenset[int]:
        """The ids of those of `tokens` that exist."""
        found = (self.token_id(t) for t in tokens if t)
        return frozenset(i for i in found if i is not None)

    def tokenizer_token(self, attribute: str) -> str | None:
        """A special token the tokenizer names (``"boi_token"``...), or ``None``."""
        return getattr(self.tokenizer, attribute, None) if self.tokenizer is not None else None

    def layout(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> TokenLayout:
        """The `TokenLayout` of a batch of token ids."""
        return TokenLayout.from_input_ids(input_ids, self.token_spec, attention_mask)

    def check_inputs(self, inputs: Mapping[str, Any], layout: TokenLayout) -> None:
        """Raise `VLMInputError` unless the image inputs match the image spans of `input_ids`.

        Checks that placeholders come with pixel values and the reverse, that the number of
        images equals the number of placeholder spans, and that each span has the length its
        image produces.
        """
        ids = inputs["input_ids"]
        n_placeholder_spans = sum(
            1
            for b, spans in enumerate(layout.spans)
            for s in spans
            if bool((ids[b, s.start : s.end + 1] == self.placeholder_token_id).any())
        )
        pixel_values = inputs.get("pixel_values")
        n_images = 0 if pixel_values is None else int(pixel_values.shape[0])
        if n_placeholder_spans and pixel_values is None:
            raise VLMInputError(
                f"the input_ids hold {n_placeholder_spans} image placeholder span(s) but no "
                "pixel_values were given, so the model would read placeholder embeddings as the "
                "image. Build inputs with model.prepare(images=..., text=...)."
            )
        if n_images and not n_placeholder_spans:
            raise VLMInputError(
                f"{n_images} image(s) were given but the input_ids hold no image placeholder "
                f"({self.image_placeholder!r}). Put {self.image_placeholder!r} in the prompt where "
                "each image goes and build inputs with model.prepare(images=..., text=...)."
            )
        if n_images != n_placeholder_spans:
            raise VLMInputError(
                f"{n_images} image(s) were given but the input_ids hold {n_placeholder_spans} "
                f"image placeholder span(s); give one image per {self.image_placeholder!r}."
            )
        k = 0
        for b, spans in enumerate(layout.spans):
            for span in spans:
                expected = self.expected_tokens_per_image(inputs, k)
                if expected is not None and span.length != expected:
                    raise VLMInputError(
                        f"image {k} (sequence {b}, positions {span.start}..{span.end}) has "
                        f"{span.length} placeholder positions but its image gives {expected} "
                        "tokens; let the processor expand the placeholders (model.prepare)."
                    )
                k += 1

"""The family adapter: everything vlm_lens must know about one VLM family, and nothing else.

A `VLMAdapter` subclass says which Hugging Face classes it handles, which TransformerLens
architecture adapter bridges its language model, which token ids mark the image span and the
gate (`TokenSpec`), and where the image features are computed. Shared logic lives here once;
a family file holds only its deltas. See CONTRIBUTING.md, "Adding a model family".

The seams a family may override, each with a default that fits Chameleon, Emu3, Janus and LLaVA:

============================== ================================================================
`count_images`                 images a batch holds (default ``pixel_values.shape[0]``)
`position_ids`                 the position ids HF's forward uses for the full prompt (default
                               ``arange``; multi-axis rotary families return ``[3, batch, pos]``)
`image_features`,              where the features inside ``get_image_features``' output are
`with_image_features`          (default ``.pooler_output``)
`deepstack_levels` (+ accessors) deepstack feature levels, one ``hook_deepstack_embeds.{i}``
                               each (default 0; Qwen3-VL: its ``deepstack_visual_indexes``)
`attention_structure`          causal, or bidirectional blocks (`AttentionStructure`)
`feature_groups`               rows of ``get_image_features`` per sequence (default: images)
`handles`                      whether this adapter takes a model of one of its classes (default:
                               any; by ``vision_config.model_type`` when `vision_towers` is set)
`load_processor`               how `HookedVLM.from_pretrained` loads the processor (default
                               ``AutoProcessor.from_pretrained``)
`processor_images`             how `HookedVLM.prepare` hands the images to the processor
                               (default: one flat list; OneVision, Gemma 3: one list per prompt)
`refine_layout`                roles that follow from the image inputs, not the ids (default:
                               none; LLaVA-Next's ``image_newline`` row ends and image lengths)
============================== ================================================================
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vlm_lens.attention_structure import AttentionStructure
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
        vision_towers: ``vision_config.model_type`` values the adapter takes (`handles`); empty
            (the default) takes any. Several adapters may share a Hugging Face class: LLaVA
            takes CLIP and SigLIP towers, Pixtral the ``"pixtral"`` one.
        pixel_rows: what one row of ``pixel_values`` is (`count_images` counts them), in
            error messages: ``"image"``; InternVL's are ``"tile"``s.
        layout_needs_image_inputs: the roles need the image inputs (`refine_layout`), so
            `HookedVLM.layout` refuses token ids alone; ``False`` (the default): ids suffice.
        tl_architecture: the name the bridge is built, and `tl_architecture_adapter`
            registered, under; ``None`` (the default) for ``architectures[0]``. Set it when the
            adapter shares its Hugging Face class with another that bridges it differently.

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
    vision_towers: ClassVar[tuple[str, ...]] = ()
    pixel_rows: ClassVar[str] = "image"
    tl_architecture: ClassVar[str | None] = None
    layout_needs_image_inputs: ClassVar[bool] = False

    def __init__(self, model: nn.Module, processor: Any | None = None) -> None:
        self.config: Any = model.config
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", None)
        self.token_spec: TokenSpec = self.build_token_spec(model)
        embed = getattr(model, "get_input_embeddings", None)
        self.n_embeddings: int | None = getattr(embed() if embed else None, "num_embeddings", None)

    # ------------------------------------------------------------------ what families define
    @abstractmethod
    def build_token_spec(self, model: nn.Module) -> TokenSpec:
        """The family's `TokenSpec`, from the model config (and the tokenizer when present)."""

    @property
    def architecture(self) -> str:
        """The architecture name the TransformerLens bridge is built with."""
        return self.tl_architecture or self.architectures[0]

    @classmethod
    def handles(cls, config: Any) -> bool:
        """Whether this adapter takes a model of one of its `architectures` with `config`.

        `vlm_lens.adapters.adapter_class_for` asks each adapter registered for the model's
        class in turn and takes the first that says yes. Default: any config when
        `vision_towers` is empty, else those whose ``vision_config.model_type`` is in it.

        Example:
            >>> from vlm_lens.adapters import LlavaAdapter
            >>> from vlm_lens.testing import build_tiny
            >>> LlavaAdapter.handles(build_tiny("llava").model.config)
            True
        """
        return not cls.vision_towers or vision_tower_type(config) in cls.vision_towers

    @classmethod
    def load_processor(cls, name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """The processor of a checkpoint (`HookedVLM.from_pretrained` calls it).

        Default: ``transformers.AutoProcessor.from_pretrained``. Override where that cannot
        load the family's processor without torchvision (Pixtral).
        """
        import transformers

        return transformers.AutoProcessor.from_pretrained(name_or_path, **kwargs)

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
        inner: nn.Module = getattr(model, "model")  # noqa: B009 - nn.Module types it Tensor | Module
        return inner

    def expected_tokens_per_image(self, inputs: Mapping[str, Any], image: int) -> int | None:
        """Span length image number `image` of the batch must have, or ``None`` if unknown."""
        del inputs, image
        return self.token_spec.tokens_per_image

    # ------------------------------------------------------------------ seams (with defaults)
    def count_images(self, inputs: Mapping[str, Any]) -> int:
        """How many images the model inputs of a batch hold (all sequences together).

        Default: ``pixel_values.shape[0]`` (one image per row), 0 without ``pixel_values``.
        Override when rows are not images: Qwen2-VL flattens every image's patches into one
        ``pixel_values`` and counts images by the rows of ``image_grid_thw``; LLaVA-OneVision
        and Idefics3 stack crops per image.

        Example:
            >>> class QwenLike(VLMAdapter):  # doctest: +SKIP
            ...     def count_images(self, inputs):
            ...         grid = inputs.get("image_grid_thw")
            ...         return 0 if grid is None else int(grid.shape[0])
        """
        pixel_values = inputs.get("pixel_values")
        return 0 if pixel_values is None else int(pixel_values.shape[0])

    def feature_groups(self, layout: TokenLayout) -> list[int]:
        """How many leading rows of ``get_image_features``' output each sequence owns.

        ``hook_image_embeds`` concatenates each sequence's rows into one ``[n_tokens, d]``
        row of its ``[batch, n_tokens, d]`` tensor. Default: the sequence's images
        (``layout.n_images``). InternVL's rows are tiles (several per image).

        Example:
            >>> from vlm_lens import HookedVLM
            >>> from vlm_lens.testing import build_tiny, sample_image
            >>> tiny = build_tiny("llava")
            >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
            >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
            >>> model.adapter.feature_groups(batch.layout)
            [1]
        """
        return list(layout.n_images)

    def position_ids(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        """The position ids Hugging Face's forward uses for the full prompt of `inputs`.

        vlm_lens passes them on every full forward (so the bridge does not derive others from
        the attention mask) and slices them along the last axis for prefix reuse (the prefix
        pass gets ``[..., :upto]``, suffix passes ``[..., upto:]``).

        Default: ``arange(pos)`` as ``[1, pos]``, whatever the padding, which is what the HF
        forward of Chameleon, Emu3, Janus and LLaVA computes. Override for families whose
        rotary positions are not the plain index: Qwen2-VL/Qwen2.5-VL/Qwen3-VL return the
        multi-axis ``[3, batch, pos]`` ids of ``model.model.get_rope_index``; PaliGemma
        numbers from 1.

        Example:
            >>> class QwenLike(VLMAdapter):  # doctest: +SKIP
            ...     def __init__(self, model, processor=None):
            ...         super().__init__(model, processor)
            ...         self.rope_index = model.model.get_rope_index
            ...     def position_ids(self, inputs):
            ...         ids, _deltas = self.rope_index(
            ...             inputs["input_ids"], inputs.get("image_grid_thw"), None,
            ...             attention_mask=inputs.get("attention_mask"))
            ...         return ids  # [3, batch, pos]
        """
        ids = inputs["input_ids"]
        return torch.arange(ids.shape[-1], device=ids.device)[None]

    def image_features(self, output: Any) -> Any:
        """The image features inside the output of ``get_image_features``: a
        ``[n_images, n_tokens, d_model]`` tensor, or a list/tuple of ``[n_tokens_i, d_model]``
        tensors, one per image, as the model scatters them into the placeholders.

        ``hook_image_embeds`` reads them here and writes an edit back with
        `with_image_features`. Default: ``output.pooler_output`` (all four families).

        Example:
            >>> class TupleOutput(VLMAdapter):  # doctest: +SKIP
            ...     def image_features(self, output):
            ...         return output[0]
            ...     def with_image_features(self, output, features):
            ...         return (features, *output[1:])
        """
        return output.pooler_output

    def with_image_features(self, output: Any, features: Any) -> Any:
        """`output` of ``get_image_features`` with its image features replaced by `features`
        (same container as `image_features` returned). Default: sets ``.pooler_output``."""
        output.pooler_output = features
        return output

    def deepstack_levels(self) -> int:
        """How many deepstack levels ``get_image_features`` returns: features of early tower
        layers that the decoder adds at the image positions after each of its first layers,
        one ``hook_deepstack_embeds.{i}`` point each. Default: 0 (no deepstack; Qwen3-VL has
        them). Read with `deepstack_features` and written back with `with_deepstack_features`.

        Example:
            >>> class DeepstackLike(VLMAdapter):  # doctest: +SKIP
            ...     def deepstack_levels(self):
            ...         return len(self.config.vision_config.deepstack_visual_indexes)
        """
        return 0

    def deepstack_features(self, output: Any) -> Sequence[Any]:
        """The deepstack features in the output of ``get_image_features``, one entry per level,
        each in a container `image_features` could return. Read only when `deepstack_levels`
        is positive. Default: ``output.deepstack_features`` (HF's name)."""
        features: Sequence[Any] = output.deepstack_features
        return features

    def with_deepstack_features(self, output: Any, features: Sequence[Any]) -> Any:
        """`output` with its deepstack features replaced by `features` (a list per level).
        Default: sets ``.deepstack_features``."""
        output.deepstack_features = list(features)
        return output

    def attention_structure(
        self, layout: TokenLayout, inputs: Mapping[str, Any] | None = None
    ) -> AttentionStructure:
        """Which prompt positions attend to which, as the HF forward masks them.

        Knockouts (their earliest affected position), attention rows (`attention_share`,
        `find_sinks`) and prefix reuse (a prefix may not cut through a bidirectional block)
        follow it; `HookedVLM.prepare` stores it on the `Batch`.

        Default: causal. Gemma 3 makes each image span a bidirectional block; PaliGemma (a
        prefix-LM) the image + prompt prefix, where ``token_type_ids == 0``.

        Args:
            layout: the batch's `TokenLayout`.
            inputs: the batch's model inputs, when known (``token_type_ids``...).

        Example:
            >>> class GemmaLike(VLMAdapter):  # doctest: +SKIP
            ...     def attention_structure(self, layout, inputs=None):
            ...         spans = [[(s.start, s.end + 1) for s in row] for row in layout.spans]
            ...         return AttentionStructure.from_spans(*layout.shape, spans)
        """
        del inputs
        return AttentionStructure.causal(*layout.shape)

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

    def processor_images(self, images: list[list[Any]]) -> Any:
        """The ``images`` argument `HookedVLM.prepare` gives the processor, from the images of
        each prompt (`images`, PIL). Default: one flat list. LLaVA-OneVision's processor takes
        them per prompt, and writes a prompt's images in its multi-image mode (base crop only).

        Example:
            >>> class PerPrompt(VLMAdapter):  # doctest: +SKIP
            ...     def processor_images(self, images):
            ...         return images
        """
        return [image for group in images for image in group]

    def refine_layout(self, layout: TokenLayout, inputs: Mapping[str, Any]) -> TokenLayout:
        """The layout of `inputs` (ids, mask and image inputs) refined from its image inputs.

        `HookedVLM.prepare`, `HookedVLM.batch_from_inputs` and `HookedVLM.layout` (given
        ``image_inputs``) call it on the layout `layout` found from the ids. Default: `layout`
        as it is. LLaVA-Next and LLaVA-OneVision mark their ``image_newline`` positions (the
        placeholder id, so invisible in the ids) as ``image_row_end`` and cut adjacent images
        apart from ``image_sizes``; they set `layout_needs_image_inputs`.

        Example:
            >>> class RowEndsFromSizes(VLMAdapter):  # doctest: +SKIP
            ...     layout_needs_image_inputs = True
            ...     def refine_layout(self, layout, inputs):
            ...         return layout.with_images([[(5, [4])] * n for n in layout.n_images])
        """
        del inputs
        return layout

    def check_token_ids(self, inputs: Mapping[str, Any], layout: TokenLayout) -> None:
        """Raise `VLMInputError` when `input_ids` hold ids the model has no embedding for.

        Such ids come from another model's tokenizer (the embedding lookup would fail with a
        bare ``index out of range in self``). Image-side positions and the placeholder id are
        exempt (Gemma 3 replaces a placeholder id past its vocabulary before the lookup), and
        so is padding.
        """
        if self.n_embeddings is None:
            return
        ids = inputs["input_ids"]
        outside = (ids < 0) | (ids >= self.n_embeddings)
        outside &= ids != self.placeholder_token_id
        outside &= layout.image_index < 0
        mask = inputs.get("attention_mask")
        if mask is not None:
            outside &= mask.to(ids.device).bool()
        if bool(outside.any()):
            bad = sorted(set(ids[outside].tolist()))
            raise VLMInputError(
                f"input_ids hold token id(s) {bad[:5]} outside this model's {self.n_embeddings} "
                f"embeddings: the batch was made by another model's tokenizer. Rebuild it with "
                "this model: model.prepare(images=..., text=...) (or model.batch_from_inputs on "
                "ids from model.tokenizer)."
            )

    @property
    def tile_tokens(self) -> int | None:
        """Placeholder positions per tile where ``pixel_values`` rows are tiles (InternVL,
        Idefics3): `check_inputs` then checks whole tiles (`check_tiles`); ``None`` here."""
        return None

    def span_tile_positions(self, input_ids: Tensor, row: int, span: Any) -> int:
        """The positions of `span` (in sequence `row`) that tiles fill: its placeholders."""
        ids = input_ids[row, span.start : span.end + 1]
        return int((ids == self.placeholder_token_id).sum())

    def tiles_per_sequence(self, inputs: Mapping[str, Any]) -> list[int] | None:
        """The real tiles of each sequence, where ``pixel_values`` tells (``None``: only the
        total, `count_images`)."""
        del inputs
        return None

    def check_tiles(self, inputs: Mapping[str, Any], layout: TokenLayout) -> None:
        """Each image span holds whole tiles of `tile_tokens`, and the spans as many tiles as
        ``pixel_values`` (per sequence where `tiles_per_sequence` knows)."""
        ids, tiles = inputs["input_ids"], self.count_images(inputs)
        per_tile = int(self.tile_tokens or 1)
        spans = [(b, s) for b, row in enumerate(layout.spans) for s in row]
        held = [0] * len(layout.spans)
        for b, span in spans:
            n = self.span_tile_positions(ids, b, span)
            if n % per_tile:
                raise VLMInputError(
                    f"an image span (sequence {b}, positions {span.start}..{span.end}) holds "
                    f"{n} image-span positions, not a whole number of tiles of {per_tile} tokens "
                    f"({n // per_tile * per_tile or per_tile} or {(n // per_tile + 1) * per_tile} "
                    "tokens would be); let the processor expand the placeholders (model.prepare)."
                )
            held[b] += n // per_tile
        real = self.tiles_per_sequence(inputs)
        if sum(held) != tiles or (real is not None and held != real):
            each = "" if real is None else f" ({real} per sequence)"
            held_each = "" if real is None else f" {held}"
            raise VLMInputError(
                f"pixel_values holds {tiles} tile(s){each} but the {len(spans)} image placeholder "
                f"span(s) of the input_ids hold{held_each} {sum(held)} tile(s) ({per_tile} "
                f"positions each); give one image per {self.image_placeholder!r} and build "
                "inputs with model.prepare(images=..., text=...)."
            )

    def check_inputs(self, inputs: Mapping[str, Any], layout: TokenLayout) -> None:
        """Raise `VLMInputError` unless the image inputs match the image spans of `input_ids`.

        Checks that placeholders come with pixel values and the reverse, that the number of
        images equals the number of placeholder spans, and that each span has the length its
        image produces (for tiled families, `check_tiles`).
        """
        if self.tile_tokens is not None and any(layout.spans) and self.count_images(inputs):
            self.check_tiles(inputs, layout)
            return
        ids = inputs["input_ids"]
        n_placeholder_spans = sum(
            1
            for b, spans in enumerate(layout.spans)
            for s in spans
            if bool((ids[b, s.start : s.end + 1] == self.placeholder_token_id).any())
        )
        n_images = self.count_images(inputs)
        if n_placeholder_spans and inputs.get("pixel_values") is None:
            raise VLMInputError(
                f"the input_ids hold {n_placeholder_spans} image placeholder span(s) but no "
                "pixel_values were given, so the model would read placeholder embeddings as the "
                "image. Build inputs with model.prepare(images=..., text=...)."
            )
        if n_images and not n_placeholder_spans:
            raise VLMInputError(
                f"{n_images} {self.pixel_rows}(s) were given but the input_ids hold no image "
                f"placeholder ({self.image_placeholder!r}, token id {self.placeholder_token_id}). "
                f"If the prompt has no {self.image_placeholder!r}, put one where each image goes; "
                "if it has one, the input_ids were made by another model's tokenizer. Either way "
                "build the inputs with this model: model.prepare(images=..., text=...)."
            )
        if n_images != n_placeholder_spans:
            raise VLMInputError(
                f"{n_images} {self.pixel_rows}(s) were given but the input_ids hold "
                f"{n_placeholder_spans} "
                f"image placeholder span(s); give one image per {self.image_placeholder!r}."
            )
        k = 0
        for b, spans in enumerate(layout.spans):
            for span in spans:
                expected = self.expected_tokens_per_image(inputs, k)
                if expected is not None and span.length != expected:
                    raise VLMInputError(
                        f"image {k} (sequence {b}, positions {span.start}..{span.end}) has "
                        f"{span.length} image-span positions but its image gives {expected} "
                        "tokens; let the processor expand the placeholders (model.prepare)."
                    )
                k += 1


def vision_tower_type(config: Any) -> str | None:
    """``config.vision_config.model_type``, or ``None`` when the config has no vision config.

    Example:
        >>> from vlm_lens.testing import build_tiny
        >>> vision_tower_type(build_tiny("llava").model.config)
        'clip_vision_model'
    """
    return getattr(getattr(config, "vision_config", None), "model_type", None)

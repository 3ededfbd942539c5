"""`Batch`: model inputs together with the role of every position."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from vlm_lens.attention_structure import AttentionStructure
from vlm_lens.errors import VLMInputError
from vlm_lens.layout import TokenLayout


@dataclass(frozen=True)
class Batch:
    """Inputs for a VLM forward pass and their `TokenLayout`.

    Built by `HookedVLM.prepare`; every `HookedVLM` call takes one and forwards all of
    `inputs` (``input_ids``, ``attention_mask``, ``pixel_values``, ``image_sizes``...) to the model.

    Attributes:
        inputs: the dict of tensors the Hugging Face model takes.
        layout: role of every position (``batch.layout.mask("gate")``...).
        images_per_sequence: number of images in each prompt.
        texts: the prompts as given (before placeholder expansion), when known.
        attention: which positions attend to which (`AttentionStructure`, from the family
            adapter); ``None`` is plain causal attention.
        origin: the `processor_fingerprint` of the processor that made the batch
            (`HookedVLM.prepare` sets it; a model refuses a batch of another processor), or
            ``None`` for inputs built by hand.

    Example:
        >>> from vlm_lens import HookedVLM
        >>> from vlm_lens.testing import build_tiny, sample_image
        >>> tiny = build_tiny("llava")
        >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
        >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
        >>> batch.layout.n_images, len(batch)
        ([1], 1)
    """

    inputs: dict[str, Any]
    layout: TokenLayout
    images_per_sequence: tuple[int, ...]
    texts: tuple[str, ...] | None = None
    attention: AttentionStructure | None = None
    origin: str | None = field(default=None, compare=False)

    @property
    def input_ids(self) -> Int[Tensor, "batch pos"]:
        """Token ids ``[batch, pos]`` with the image placeholders expanded."""
        return self.inputs["input_ids"]

    @property
    def attention_mask(self) -> Int[Tensor, "batch pos"] | None:
        """``[batch, pos]``, 0 at padding."""
        return self.inputs.get("attention_mask")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """Move every tensor to `device`; cast floating tensors (pixels) to `dtype` if given."""
        return replace(self, inputs=move_inputs(self.inputs, device, dtype))


def move_inputs(
    inputs: Mapping[str, Any], device: torch.device | str, dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """A copy of `inputs` with its tensors on `device` and floating ones cast to `dtype`."""
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, Tensor):
            cast = dtype if dtype is not None and value.is_floating_point() else None
            value = value.to(device=device, dtype=cast)
        out[key] = value
    return out


def layout_of(batch: Batch | TokenLayout) -> TokenLayout:
    """The `TokenLayout` of a `Batch`, or the layout itself."""
    return batch.layout if isinstance(batch, Batch) else batch


def attention_of(batch: Batch | TokenLayout) -> AttentionStructure:
    """The `AttentionStructure` of a `Batch` (causal when it names none, or for a layout)."""
    if isinstance(batch, Batch) and batch.attention is not None:
        return batch.attention
    return AttentionStructure.causal(*layout_of(batch).shape)


def processor_fingerprint(processor: Any) -> str | None:
    """What identifies a processor's batches: its classes, vocabulary and image settings.

    Two processors with the same tokenizer vocabulary (added tokens included) and the same
    image processor settings make the same batches and have the same fingerprint, wherever
    they were loaded from; ``None`` for no processor.

    Example:
        >>> from vlm_lens.testing import build_tiny
        >>> llava, chameleon = build_tiny("llava"), build_tiny("chameleon")
        >>> processor_fingerprint(llava.processor).split(" (")[0]
        'LlavaProcessor/TokenizersBackend'
        >>> processor_fingerprint(llava.processor) == processor_fingerprint(chameleon.processor)
        False
    """
    if processor is None:
        return None
    tokenizer = getattr(processor, "tokenizer", processor)
    digest = hashlib.sha256()
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    digest.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and hasattr(image_processor, "to_dict"):
        settings = json.dumps(image_processor.to_dict(), sort_keys=True, default=str)
        digest.update(settings.encode())
    names = f"{type(processor).__name__}/{type(tokenizer).__name__}"
    return f"{names} ({len(vocab)} tokens, {digest.hexdigest()[:12]})"


def check_origin(batch: Batch, fingerprint: str | None) -> None:
    """Raise `VLMInputError` when `batch` was made by a processor other than `fingerprint`'s.

    Batches without an origin (built by hand) and models without a processor pass.
    """
    if batch.origin is None or fingerprint is None or batch.origin == fingerprint:
        return
    raise VLMInputError(
        f"this batch was made by another model's processor ({batch.origin}), not this "
        f"model's ({fingerprint}); its token ids and pixels mean something else here. Rebuild "
        "it with this model: model.prepare(images=..., text=batch.texts)"
    )

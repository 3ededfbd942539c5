"""What TransformerLens users type, on `HookedVLM`: text helpers and the bridge's weights.

- ``to_tokens(text)``: text-only token ids ``[batch, pos]`` (prompts with an image go through
  ``model.prepare(images=..., text=...)``, which expands the image placeholders).
- ``to_string(ids)``: ids back to text (one string for ``[pos]``, a list for ``[batch, pos]``).
- ``to_str_tokens(x)``: token strings of a `Batch` sequence, a string, or ids.
- ``W_U``, ``W_E``, ``b_U``, ``W_Q``, ``W_K``, ``W_V``, ``W_O``, ``b_Q``, ``b_K``, ``b_V``,
  ``b_O``, ``W_in``, ``W_out``, ``b_in``, ``b_out``, ``W_pos``, ``blocks``, ``embed``,
  ``unembed``, ``ln_final``: the TransformerBridge's own attributes (the language model's
  weights in TransformerLens' layout, e.g. ``W_U`` is ``[d_model, d_vocab]``, ``W_Q``
  ``[n_layers, n_heads, d_model, d_head]``); where the bridge lacks one (``W_pos`` without
  learned positions) its own error says why.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny
    >>> tiny = build_tiny("llava")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> ids = model.to_tokens("a cat")
    >>> model.to_string(ids[0]) == model.tokenizer.decode(ids[0])
    True
    >>> model.W_U.shape == (model.cfg.d_model, model.cfg.d_vocab)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vlm_lens.batch import Batch
from vlm_lens.errors import VLMInputError

__all__ = ["BRIDGE_ATTRIBUTES", "TransformerLensHabits"]

BRIDGE_ATTRIBUTES: frozenset[str] = frozenset(
    {
        "W_U", "W_E", "b_U", "W_pos",
        "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O",
        "W_in", "W_out", "b_in", "b_out",
        "blocks", "embed", "unembed", "ln_final",
    }
)  # fmt: skip
"""TransformerLens names `HookedVLM` hands to its `TransformerBridge`."""


class TransformerLensHabits(nn.Module):
    """Base of `HookedVLM`: TransformerLens' text helpers and weight names."""

    if TYPE_CHECKING:  # provided by HookedVLM

        @property
        def tokenizer(self) -> Any: ...
        @property
        def image_placeholder(self) -> str: ...
        @property
        def device(self) -> torch.device: ...

    def __getattr__(self, name: str) -> Any:
        if name in BRIDGE_ATTRIBUTES:  # the bridge is a registered submodule
            return getattr(super().__getattr__("bridge"), name)
        return super().__getattr__(name)

    def _need_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise VLMInputError("no tokenizer: build the HookedVLM with its processor")
        return self.tokenizer

    def to_tokens(
        self, text: str | Sequence[str], *, prepend_bos: bool = True, padding_side: str = "left"
    ) -> Tensor:
        """Token ids of text-only prompts, ``[batch, pos]``, padded on `padding_side`.

        Args:
            text: one prompt or several.
            prepend_bos: add the tokenizer's special tokens (its BOS) as it would by default.
            padding_side: where shorter prompts are padded.

        Raises:
            VLMInputError: when a prompt holds the image placeholder (use ``prepare``).

        Example:
            >>> model.to_tokens(["a", "a cat"]).shape[0]  # doctest: +SKIP
            2
        """
        tokenizer = self._need_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        placeholder = self.image_placeholder
        if any(placeholder and placeholder in t for t in texts):
            raise VLMInputError(
                f"to_tokens tokenizes text only, and a prompt holds the image placeholder "
                f"{placeholder!r}; build image prompts with model.prepare(images=..., text=...)"
            )
        if padding_side not in ("left", "right"):
            raise VLMInputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        side = tokenizer.padding_side
        try:
            tokenizer.padding_side = padding_side
            out = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=prepend_bos
            )
        finally:
            tokenizer.padding_side = side
        return out["input_ids"].to(self.device)

    def to_string(
        self, tokens: Tensor | Sequence[int] | Sequence[Sequence[int]]
    ) -> str | list[str]:
        """Decode ids: ``[pos]`` gives one string, ``[batch, pos]`` one per row.

        Example:
            >>> model.to_string(model.to_tokens("a cat")[0])  # doctest: +SKIP
            '<s> a cat'
        """
        tokenizer = self._need_tokenizer()
        ids = torch.as_tensor(tokens)
        if ids.ndim == 1:
            return str(tokenizer.decode(ids.tolist()))
        if ids.ndim == 2:
            return [str(tokenizer.decode(row)) for row in ids.tolist()]
        raise VLMInputError(f"to_string takes [pos] or [batch, pos] ids, got {tuple(ids.shape)}")

    def to_str_tokens(self, x: Batch | str | Tensor | Sequence[int], index: int = 0) -> list[str]:
        """Token strings of sequence `index` of a `Batch`, of a text-only string (tokenized as
        `to_tokens` does), or of ids (``[pos]``, or row `index` of ``[batch, pos]``).

        Example:
            >>> model.to_str_tokens(batch)[:2]  # doctest: +SKIP
            ['<s>', '<image>']
        """
        tokenizer = self._need_tokenizer()
        if isinstance(x, Batch):
            ids = x.input_ids[index]
        elif isinstance(x, str):
            ids = self.to_tokens(x)[0]
        else:
            ids = torch.as_tensor(x)
            ids = ids[index] if ids.ndim == 2 else ids
        if ids.ndim != 1:
            raise VLMInputError(f"to_str_tokens takes [pos] or [batch, pos] ids, got {ids.ndim}-d")
        return list(tokenizer.convert_ids_to_tokens(ids.tolist()))

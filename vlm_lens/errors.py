"""Exceptions raised by vlm_lens. Each message names the problem and the fix."""

from __future__ import annotations


class VLMLensError(Exception):
    """Base class of every vlm_lens error."""


class VLMInputError(VLMLensError, ValueError):
    """Inputs that would make the model run on something other than what the user meant.

    Raised for a prompt without an image placeholder when images are given, an image count that
    does not match the placeholders, a batch whose layout does not match its ids, or inputs on
    another device than the model.
    """


class UnsupportedModelError(VLMLensError, ValueError):
    """A model whose architecture no registered family adapter handles."""

"""User hooks that return a tensor must return one of the shape they were given.

TransformerLens hands a hook's return value on as the activation, whatever its shape; a hook
that returns another batch size or length would run on and corrupt everything after it (or
fail far away). `checked_hooks` wraps each function so that such a return raises at the hook,
naming it. Returning ``None`` (read-only hooks) and in-place edits are unaffected.

Example:
    >>> import torch
    >>> [(name, fn)] = checked_hooks([("blocks.0.hook_resid_pre", lambda t, hook: t[:1])])
    >>> class Point:
    ...     name = "blocks.0.hook_resid_pre"
    >>> fn(torch.zeros(2, 3, 4), Point())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    vlm_lens.errors.VLMInputError: blocks.0.hook_resid_pre: a hook returned shape (1, 3, 4) ...
"""

from __future__ import annotations

import functools
from typing import Any

from torch import Tensor

from vlm_lens.errors import VLMInputError
from vlm_lens.types import HookFn, HookList

__all__ = ["checked_hooks"]


def checked_hooks(hooks: HookList) -> list[tuple[Any, HookFn]]:
    """`hooks` with each function wrapped by the shape check (names unchanged)."""
    return [(name, _checked(fn, name if isinstance(name, str) else None)) for name, fn in hooks]


def _checked(fn: HookFn, given: str | None) -> HookFn:
    if getattr(fn, "_vlm_lens_checked", False):
        return fn

    @functools.wraps(fn)
    def run(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        out = fn(tensor, *args, **kwargs)
        if isinstance(out, Tensor) and isinstance(tensor, Tensor) and out.shape != tensor.shape:
            hook = kwargs.get("hook", args[0] if args else None)
            name = given or getattr(hook, "name", "a hook point")
            raise VLMInputError(
                f"{name}: a hook returned shape {tuple(out.shape)} for an activation of shape "
                f"{tuple(tensor.shape)}; return a tensor of the same shape (or None to leave it "
                "unchanged)"
            )
        return out

    run._vlm_lens_checked = True  # type: ignore[attr-defined]
    return run

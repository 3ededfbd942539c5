"""Type aliases shared across vlm_lens: hooks, hook lists, images.

One definition each, so that ``HookList`` means the same thing in the facade, the engine and
the interventions.

Example:
    >>> from vlm_lens.types import Hook
    >>> hook: Hook = ("blocks.0.hook_resid_pre", lambda tensor, hook: None)
    >>> hook[0]
    'blocks.0.hook_resid_pre'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

HookName = str | Callable[[str], bool]
"""A hook point's name, or a ``names_filter``-style predicate on names."""

HookFn = Callable[..., Any]
"""A TransformerLens hook function, ``fn(tensor, hook) -> tensor | None``."""

Hook = tuple[HookName, HookFn]
"""One ``(name or filter, function)`` pair, as in TransformerLens' ``fwd_hooks``."""

HookList = Sequence[Hook]
"""A ``fwd_hooks``/``bwd_hooks`` list."""

ImageLike = Image.Image | np.ndarray
"""What `HookedVLM.prepare` accepts as one image: PIL, or an ``[H, W, 3]`` array."""

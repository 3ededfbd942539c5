"""Names that `HookedVLM.from_pretrained` resolves before loading (``organism:native``...).

A package that ships checkpoints registers a prefix and a function that turns a name with that
prefix into a folder (`vlm_lens.zoo.registry` registers ``organism:``). The facade asks
`resolve_checkpoint` and never imports who registered it, so the model layer does not depend on
the organisms.

Example:
    >>> register_resolver("demo:", lambda name: f"/models/{name}")
    >>> resolve_checkpoint("demo:tiny"), resolve_checkpoint("facebook/chameleon-7b")
    ('/models/tiny', 'facebook/chameleon-7b')
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

Resolver = Callable[[str], "str | os.PathLike[str]"]

_RESOLVERS: dict[str, Resolver] = {}


def register_resolver(prefix: str, resolver: Resolver) -> None:
    """Resolve names starting with `prefix` with ``resolver(name_without_prefix)``."""
    _RESOLVERS[prefix] = resolver


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> str | os.PathLike[str] | Path:
    """The folder a registered name stands for, or `name_or_path` unchanged."""
    if isinstance(name_or_path, str):
        for prefix, resolver in _RESOLVERS.items():
            if name_or_path.startswith(prefix):
                return resolver(name_or_path[len(prefix) :])
    return name_or_path

"""Which prompt positions the current forward pass computes (for prefix reuse).

A forward on a cached prefix (`HookedVLM.run_suffix`) computes only positions ``offset ..
pos - 1`` of the prompt, so its ``[batch, pos, ...]`` activations have fewer positions than the
batch. Hooks that write at prompt positions (patching, steering) ask `query_offset` where the
block starts; outside such a pass it is ``None`` and a short block means a cached generation
step (new tokens only).

Example:
    >>> query_offset() is None
    True
    >>> with query_block(30):
    ...     query_offset()
    30
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_OFFSET: ContextVar[int | None] = ContextVar("vlm_lens_query_offset", default=None)


def query_offset() -> int | None:
    """The prompt position of the first query of the running forward pass, or ``None`` when
    the pass is not a suffix of the prompt (full prompt, or a generation step)."""
    return _OFFSET.get()


@contextmanager
def query_block(offset: int) -> Iterator[None]:
    """Mark the forward passes inside as computing prompt positions from `offset` on."""
    token = _OFFSET.set(int(offset))
    try:
        yield
    finally:
        _OFFSET.reset(token)

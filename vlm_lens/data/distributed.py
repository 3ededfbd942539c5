"""Data parallel dataset runs: the ranks of a ``torchrun`` or ``accelerate launch`` run.

`current` reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment (what both
launchers set; no flag needed). With more than one process, `vlm_lens.data.run_dataset` gives
chunk ``c`` to rank ``c % world_size``: every rank writes its own chunk files into the one store
folder (which all ranks must see: one machine, or a shared filesystem across nodes), rank 0
creates the manifest first, and at the end rank 0 checks that every chunk of every rank is on
disk before all ranks return the complete store. The chunks are the same batches as in one
process, so the store is the same, array for array. Resuming works per rank: each rank checks
and skips its own finished chunks (after a restart with another world size too, since a chunk's
contents do not depend on which rank computed it).

Every rank must call `run_dataset` with the same arguments (``shard=False`` opts a call made on
one rank only out of all this). Coordination uses `torch.distributed` (the process group the
launcher's script already initialised, or a ``gloo`` one that `current` initialises: it needs
no GPU). Errors on any rank are gathered and raised on every rank, so no rank waits forever on
one that failed.

Example:
    >>> current().world_size  # a plain process
    1
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch.distributed as dist
from tqdm.auto import tqdm

from vlm_lens.errors import VLMLensError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a multi-process run.

    Attributes:
        rank: this process's global rank, ``0 .. world_size - 1``.
        world_size: number of processes.
        local_rank: rank on this node (picks the GPU: ``cuda:{local_rank}``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    def owns(self, chunk: int) -> bool:
        """Whether this rank computes chunk `chunk` (round robin)."""
        return chunk % self.world_size == self.rank

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (a picklable object), in rank order."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def together(self, step: Callable[[], T], what: str) -> T:
        """Run `step` on this rank, then wait for every rank; if any rank raised, raise on
        every rank (the same exception here, a summary naming the failed ranks elsewhere)."""
        error: BaseException | None = None
        result: Any = None
        try:
            result = step()
        except BaseException as exc:  # re-raised below, on every rank
            error = exc
        failures = self.gather(
            None if error is None else (type(error), f"{type(error).__name__}: {error}")
        )
        if error is not None:
            raise error
        failed = [(r, f) for r, f in enumerate(failures) if f is not None]
        if failed:
            shown = "; ".join(f"rank {r}: {f[1]}" for r, f in failed)
            message = f"{what} failed on another rank ({shown})"
            kind = failed[0][1][0]
            # vlm_lens' own errors keep their class, so every rank takes the same branch of an
            # ``except`` (a skipped analysis is skipped everywhere); anything else is a RuntimeError
            if isinstance(kind, type) and issubclass(kind, VLMLensError):
                try:
                    raised: Exception = kind(message)
                except Exception:  # noqa: BLE001 - an error class with another signature
                    raised = RuntimeError(message)
                raise raised
            raise RuntimeError(message)
        return cast(T, result)


def current() -> Ranks:
    """The ranks of this process, from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (a single process
    when they are unset), with `torch.distributed` initialised when there are several (a group
    it creates is closed at exit).

    Raises:
        ValueError: for inconsistent variables, naming them.
    """
    ranks = detect()
    if ranks.active and not dist.is_initialized():
        dist.init_process_group(backend="gloo", rank=ranks.rank, world_size=ranks.world_size)
        # a process that exits with the group alive can abort in gloo's threads ("terminate
        # called without an active exception", exit code -6): the group we made, we close
        atexit.register(_close_group)
    return ranks


def _close_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def detect() -> Ranks:
    """The ranks of this process from the environment, as `current`, without initialising
    `torch.distributed` (for a command that only needs to know whether it was launched).

    Raises:
        ValueError: for inconsistent variables, naming them.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(
            f"RANK={rank} and WORLD_SIZE={world} are inconsistent; launch with torchrun or "
            "accelerate launch, or unset them for one process"
        )
    return Ranks(rank=rank, world_size=world, local_rank=local)


_SHARED: Ranks | None = None
"""The ranks the analyses' loops are shared by (inside `sharded`), else ``None``."""


@contextmanager
def sharded() -> Iterator[Ranks]:
    """Inside the block, the analyses share their loops over batches with the other ranks of a
    ``torchrun`` / ``accelerate launch`` run, and every rank gets the whole result.

    Each of `vlm_lens.analysis`' loops (`attention_share`, `knockout_effect`,
    `knockout_sweep`, `patching_sweep`) and the organisms' `answer_accuracy`
    go through `map_shared`: rank ``r`` runs batches ``i`` with ``i % world_size == r``, the
    outputs are gathered, and the result is computed from all of them, in order, on every
    rank: the same numbers as one process on the same batches. Every rank must make the same
    calls with the same batches (build them the same way on every rank); only rank 0 should
    write files. Outside a launch the block changes nothing.

    Example:
        >>> with sharded() as ranks:  # doctest: +SKIP
        ...     result = attention_share(model, batches)  # each rank ran its share
        >>> with sharded() as ranks:
        ...     ranks.world_size
        1
    """
    global _SHARED
    ranks = current()
    previous = _SHARED
    _SHARED = ranks if ranks.active else None
    try:
        yield ranks
    finally:
        _SHARED = previous


def shared_ranks() -> Ranks:
    """The ranks the analyses' loops are shared by: those of the enclosing `sharded` block,
    else one process.

    Example:
        >>> shared_ranks().world_size
        1
    """
    return _SHARED or Ranks()


def map_shared(
    step: Callable[[T], R],
    items: Iterable[T],
    *,
    desc: str = "",
    progress: bool = False,
    on_every: Callable[[T], None] | None = None,
) -> list[R]:
    """``[step(item) for item in items]``, shared by the ranks inside `sharded`.

    `items` is read once, lazily (a generator of batches keeps one batch in memory at a time).
    Rank ``r`` runs the items ``i`` with ``i % world_size == r``; every rank returns every
    output, in the order of `items`, so `step` must return picklable values (on the CPU).
    An error on any rank is raised on every rank (`Ranks.together`).

    Args:
        step: what to compute for one item.
        items: the items (every rank passes the same).
        desc: the progress bar's label.
        progress: show a progress bar (on rank 0 only).
        on_every: called with every item on every rank, before `step` (say, to record the
            inputs' provenance).

    Returns:
        One output per item.

    Raises:
        RuntimeError: when the ranks were given different numbers of items.

    Example:
        >>> map_shared(lambda x: x * x, [1, 2, 3])
        [1, 4, 9]
    """
    ranks = _SHARED
    if ranks is None:
        alone: list[R] = []
        for item in tqdm(items, desc=desc, disable=not progress):
            if on_every is not None:
                on_every(item)
            alone.append(step(item))
        return alone
    bar = progress and ranks.rank == 0
    label = f"{desc} (rank 0 of {ranks.world_size})"
    active = ranks

    def work() -> tuple[int, list[R]]:
        mine: list[R] = []
        count = 0
        for i, item in enumerate(tqdm(items, desc=label, disable=not bar)):
            count += 1
            if on_every is not None:
                on_every(item)
            if active.owns(i):
                mine.append(step(item))
        return count, mine

    count, outputs = ranks.together(work, desc or "a shared loop")
    parts = ranks.gather((count, outputs))
    if any(n != count for n, _ in parts):
        raise RuntimeError(
            f"the ranks were given {[n for n, _ in parts]} items in {desc!r}; build them the "
            "same way on every rank"
        )
    out: list[Any] = [None] * count
    for rank, (_, part) in enumerate(parts):
        for i, value in zip(range(rank, count, ranks.world_size), part, strict=True):
            out[i] = value
    return out

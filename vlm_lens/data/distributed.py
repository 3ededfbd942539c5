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

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch.distributed as dist

T = TypeVar("T")


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
        failures = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(r, f) for r, f in enumerate(failures) if f is not None]
        if failed:
            shown = "; ".join(f"rank {r}: {f}" for r, f in failed)
            raise RuntimeError(f"{what} failed on another rank ({shown})")
        return cast(T, result)


def current() -> Ranks:
    """The ranks of this process, from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (a single process
    when they are unset), with `torch.distributed` initialised when there are several.

    Raises:
        ValueError: for inconsistent variables, naming them.
    """
    ranks = detect()
    if ranks.active and not dist.is_initialized():
        dist.init_process_group(backend="gloo", rank=ranks.rank, world_size=ranks.world_size)
    return ranks


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

"""Data parallel `run_dataset`: two ``torchrun`` processes on CPU (gloo) give the store of one.

The two-process run resumes a store that one process started and that was then damaged, so
the same test checks the sharding (each rank computes its own chunks, round robin), resume per
rank (finished chunks skipped, a damaged one recomputed by its owner) and that every array is
``torch.equal`` to an uninterrupted single-process run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _runner_child import RUN_KWARGS, setup
from _torchrun import launch, rank_lines

from vlm_lens.data import distributed
from vlm_lens.data.runner import run_dataset
from vlm_lens.data.store import ActivationStore

CHILD = Path(__file__).parent / "_dist_child.py"


def test_two_processes_resume_and_equal_one(tmp_path: Path) -> None:
    model, examples, probes = setup()  # 10 examples in chunks of 3: chunks 0..3
    out = tmp_path / "two"

    def stop(chunk: int, store: ActivationStore) -> None:
        if chunk == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_dataset(model, examples, probes, out, on_chunk_written=stop, **RUN_KWARGS)
    damaged = out / "chunk_000001.safetensors"
    data = bytearray(damaged.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    for offset in np.random.default_rng(0).choice(np.arange(header, len(data)), 50, False):
        data[offset] ^= 0xFF
    damaged.write_bytes(bytes(data))

    proc = launch(CHILD, str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_rank = rank_lines(proc)
    assert by_rank[0]["written"] == [2]  # chunk 0 was done; chunk 2 is rank 0's
    assert by_rank[1]["written"] == [1, 3]  # chunk 1 damaged: its owner recomputed it
    assert by_rank[0]["complete"] and by_rank[1]["complete"]

    one = run_dataset(model, examples, probes, tmp_path / "one", **RUN_KWARGS)
    two = ActivationStore(out)
    assert two.fingerprint == one.fingerprint and two.damaged_chunks() == {}
    assert two.names == one.names and one.names
    for name in one.names:
        assert torch.equal(two.load(name), one.load(name)), name
    assert two.labels == one.labels and two.ids == one.ids


def test_ranks_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    single = distributed.current()
    assert (single.rank, single.world_size, single.active) == (0, 1, False)
    assert all(single.owns(c) for c in range(5)) and single.gather(7) == [7]
    with pytest.raises(ZeroDivisionError):
        single.together(lambda: 1 // 0, "dividing")
    ranks = distributed.Ranks(rank=1, world_size=3)
    assert [c for c in range(8) if ranks.owns(c)] == [1, 4, 7]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 and WORLD_SIZE=2 are inconsistent"):
        distributed.current()


def test_shard_false_ignores_the_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call made on one rank only: with shard=False it never touches torch.distributed
    (the variables below would make it wait for a second process) and runs every chunk."""
    model, examples, probes = setup(4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed.dist, "init_process_group", _never)
    store = run_dataset(model, examples, probes, tmp_path, shard=False, **RUN_KWARGS)
    assert store.complete and store.completed_chunks == [0, 1]


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("shard=False must not join a process group")

"""Checkpoint and resume a training run: ``out/checkpoint/state.pt``, written atomically.

A checkpoint holds the recipe (`Settings.recipe`), the records of finished phases, the phase in
progress with its step and loop state (optimiser, generators, data orders, histories), the model's
weights and the global RNG states (torch, python ``random``, numpy). Rerunning the same command
resumes from it; a different recipe against it is refused.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from vlm_lens.zoo.native.settings import Settings
    >>> folder = Path(tempfile.mkdtemp())
    >>> ckpt = Checkpointer(folder, Settings())
    >>> ckpt.finished("vq"), ckpt.resume("vq"), ckpt.progress()
    (None, None, 'not started')
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlm_lens.zoo.native.settings import Settings

CHECKPOINT = Path("checkpoint") / "state.pt"
"""The checkpoint file, relative to the run's ``--out`` folder."""


class StopTraining(Exception):  # noqa: N818 (a signal, not an error)
    """Raised after `Settings.stop_after` steps, once the checkpoint is saved."""


class RecipeMismatch(ValueError):  # noqa: N818
    """The checkpoint in ``--out`` was written with other settings."""


def read_checkpoint(out: Path) -> dict[str, Any] | None:
    """The checkpoint of run folder `out`, or None."""
    path = out / CHECKPOINT
    if not path.exists():
        return None
    state: dict[str, Any] = torch.load(path, weights_only=False)
    return state


class Checkpointer:
    """Saves and restores one run's progress.

    Args:
        out: the run's ``--out`` folder.
        settings: the run's settings (its recipe must match an existing checkpoint's).
        model: the model whose weights are saved (set before the first save).

    Raises:
        RecipeMismatch: when ``out/checkpoint`` holds a run with another recipe.
    """

    def __init__(self, out: Path, settings: Settings, model: Any = None):
        self.path = out / CHECKPOINT
        self.settings = settings
        self.model = model
        self.steps_this_run = 0
        self.state = read_checkpoint(out)
        if self.state is not None and self.state["recipe"] != settings.recipe():
            theirs, ours = self.state["recipe"], settings.recipe()
            diff = {k: (theirs.get(k), ours.get(k)) for k in ours if theirs.get(k) != ours[k]}
            raise RecipeMismatch(
                f"{self.path} was written by a run with other settings (checkpoint vs now: "
                f"{diff}); rerun with the checkpoint's settings to resume, or use a new --out "
                "(or delete the checkpoint folder) to start over"
            )
        if self.state is None:
            self.state = {"recipe": settings.recipe(), "finished": {}, "phase": None}

    def progress(self) -> str:
        """``"not started"``, ``"PHASE step N"`` or ``"after PHASE"``."""
        assert self.state is not None
        if self.state["phase"] is not None:
            return f"{self.state['phase']} step {self.state['step']}"
        done = list(self.state["finished"])
        return f"after {done[-1]}" if done else "not started"

    def restore_model(self) -> None:
        """Load the checkpoint's weights and global RNG states, if it has any."""
        assert self.state is not None
        if "model" in self.state:
            self.model.load_state_dict(self.state["model"])
            _set_rng(self.state["rng"])

    def finished(self, phase: str) -> dict[str, Any] | None:
        """The record of `phase` if it finished, else None."""
        assert self.state is not None
        record: dict[str, Any] | None = self.state["finished"].get(phase)
        return record

    def resume(self, phase: str) -> tuple[int, dict[str, Any]] | None:
        """``(step, loop state)`` of `phase` if it is in progress, else None."""
        assert self.state is not None
        if self.state["phase"] != phase:
            return None
        return self.state["step"], self.state["loop"]

    def step(self, phase: str, step: int, total: int, loop: Callable[[], dict[str, Any]]) -> None:
        """Count one finished optimiser step (`step` of `total`, from 1); save every
        ``checkpoint_every`` steps, and at `stop_after` steps or past the `deadline`, then raise
        `StopTraining` there."""
        self.steps_this_run += 1
        stop = self.settings.stop_after and self.steps_this_run >= self.settings.stop_after
        late = bool(self.settings.deadline) and time.time() >= self.settings.deadline
        stop = stop or late
        every = self.settings.checkpoint_every
        if stop or (every and step % every == 0 and step < total):
            assert self.state is not None
            self.state.update(phase=phase, step=step, loop=loop())
            self._save()
        if stop:
            why = f"at the deadline {self.settings.deadline:.0f}, " if late else ""
            raise StopTraining(
                f"stopped {why}after {self.steps_this_run} steps ({phase} step {step} of "
                f"{total}); rerun the same command to resume"
            )

    def finish(self, phase: str, record: dict[str, Any]) -> None:
        """Mark `phase` finished with its `record` and save."""
        assert self.state is not None
        self.state["finished"][phase] = record
        self.state.update(phase=None, step=None, loop=None)
        self._save()

    def _save(self) -> None:
        assert self.state is not None
        self.state["model"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.state["rng"] = _get_rng()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(self.state, tmp)
        os.replace(tmp, self.path)


def _get_rng() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])

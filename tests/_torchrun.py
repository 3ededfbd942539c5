"""Test helper: launch a child script as two ``torchrun`` processes on CPU (gloo).

`launch` clears any launcher variables of the test process itself, pins each rank to one
thread, and returns the finished process; `rank_lines` reads the JSON line each rank printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent


def launch(child: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node 2 CHILD ARGS...``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return subprocess.run(
        [*command, "--nproc-per-node", "2", str(child), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rank_lines(proc: subprocess.CompletedProcess[str]) -> dict[int, dict[str, Any]]:
    """``{rank: line}`` of the JSON lines (those starting with ``{``) the ranks printed."""
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    return {line["rank"]: line for line in lines}

"""`PredictionLog`: ``predictions.jsonl``, one JSON row per (item, run), appended as produced.

The first line is a header with the run's config (task, model, conditions, seed, items...)
and its fingerprint (`vlm_lens.data.store.fingerprint`); every later line is one row
``{"id", "run", "condition", "draw", "prediction" | "representation"}``, flushed as soon as it
is written. Reopening a log of the same run returns the rows done so far (a line cut off by a
kill is dropped and the file truncated before it), so a restarted run skips them; a log of
another run is refused, naming what differs, so two runs never mix.

In a multi-process run (`vlm_lens.data.distributed`) each rank appends to its own
``predictions.rank{r}.jsonl`` (`log_name`), with the same header; `read_rows` reads another
rank's log without touching it (a row still being written is left out), and `log_paths` lists
every log of an out folder, so a run resumes from all of them whatever the number of processes.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "predictions.jsonl"
    >>> log = PredictionLog.open(path, {"task": "vqav2", "model": "m"})
    >>> log.write({"id": "q1", "run": "baseline", "prediction": "red"})
    >>> log.close()
    >>> sorted(PredictionLog.open(path, {"task": "vqav2", "model": "m"}).done)
    [('q1', 'baseline')]
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from vlm_lens.data.store import fingerprint
from vlm_lens.errors import StoreConfigError

__all__ = ["FORMAT", "PredictionLog", "log_name", "log_paths", "read_rows"]

FORMAT = "vlm_lens.predictions/1"
"""The header's format tag."""


class PredictionLog:
    """An append-only JSONL log of predictions with a config header.

    Attributes:
        path: the file.
        config: the run's config (from the header).
        fingerprint: its fingerprint.
        rows: every row read back or written, in order.
    """

    def __init__(self, path: Path, config: dict[str, Any], rows: list[dict[str, Any]]):
        self.path = path
        self.config = config
        self.fingerprint = fingerprint(config)
        self.rows = rows
        self._file: IO[str] | None = None

    @property
    def done(self) -> set[tuple[str, str]]:
        """``(item id, run)`` pairs already written."""
        return {(str(r["id"]), str(r["run"])) for r in self.rows}

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], config: Mapping[str, Any], *, overwrite: bool = False
    ) -> PredictionLog:
        """Open the log of the run `config` at `path`: new, or resumed if it holds that run.

        Raises:
            StoreConfigError: if `path` holds another run's log (or a file that is not a log),
                naming what differs, unless `overwrite`.
        """
        file = Path(path)
        plain = _plain(config)
        digest = fingerprint(plain)
        if overwrite and file.exists():
            file.unlink()
        if not file.exists() or file.stat().st_size == 0:
            file.parent.mkdir(parents=True, exist_ok=True)
            first: dict[str, Any] = {"format": FORMAT, "fingerprint": digest, "config": plain}
            with file.open("w", encoding="utf-8") as out:
                out.write(json.dumps(first, sort_keys=True) + "\n")
            return cls(file, plain, [])
        rows, good_bytes = _read_run(file, plain)
        if good_bytes < file.stat().st_size:  # a row cut off by a kill
            with file.open("r+b") as out:
                out.truncate(good_bytes)
        return cls(file, plain, rows)

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row and flush it to disk."""
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        record = dict(row)
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows.append(record)

    def close(self) -> None:
        """Close the file (rows already written stay)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def log_name(rank: int = 0, world_size: int = 1) -> str:
    """The log file of `rank`: ``predictions.jsonl`` for one process, else
    ``predictions.rank{rank}.jsonl``.

    Example:
        >>> log_name(), log_name(1, 2)
        ('predictions.jsonl', 'predictions.rank1.jsonl')
    """
    return "predictions.jsonl" if world_size == 1 else f"predictions.rank{rank}.jsonl"


def log_paths(folder: str | os.PathLike[str]) -> list[Path]:
    """Every predictions log in `folder` (one process's and each rank's), sorted."""
    out = Path(folder)
    return sorted(
        p
        for p in out.glob("predictions*.jsonl")
        if p.name == "predictions.jsonl" or _RANK_LOG.fullmatch(p.name)
    )


def read_rows(path: str | os.PathLike[str], config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The complete rows of the log at `path` of the run `config`, read only (a last row
    without its newline, being written or cut off by a kill, is left out).

    Raises:
        StoreConfigError: if `path` holds another run's log (or a file that is not a log).
    """
    return _read_run(Path(path), _plain(config))[0]


_RANK_LOG = re.compile(r"predictions\.rank\d+\.jsonl")


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    plain: dict[str, Any] = json.loads(json.dumps(dict(config), sort_keys=True, default=str))
    return plain


def _read_run(file: Path, plain: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Rows and good byte length of `file`, checked to be the log of the run `plain`."""
    header, rows, good_bytes = _read(file)
    stored: dict[str, Any] = header.get("config") or {}
    if header.get("fingerprint") != fingerprint(dict(plain)):
        raise StoreConfigError(
            f"{file} holds another run ({_diff(stored, plain)}); "
            "resuming would mix two runs. Use another --out folder, or delete the file "
            "(overwrite=True) to start again"
        )
    return rows, good_bytes


def _read(file: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Header, complete rows, and the byte length of the complete lines."""
    data = file.read_bytes()
    lines = data.split(b"\n")
    header: Any
    try:
        header = json.loads(lines[0])
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StoreConfigError(
            f"{file} is not a vlm_lens predictions log (no {FORMAT} header); use another "
            "--out folder"
        )
    rows: list[dict[str, Any]] = []
    good = len(lines[0]) + 1
    for line in lines[1:-1]:  # the last piece has no newline: complete rows end with one
        try:
            row = json.loads(line)
        except ValueError:
            break
        rows.append(row)
        good += len(line) + 1
    return header, rows, good


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    parts = []
    for key in sorted(set(old) | set(new)):
        a = json.dumps(old.get(key), sort_keys=True, default=str)
        b = json.dumps(new.get(key), sort_keys=True, default=str)
        if a != b:
            a = a if len(a) <= 60 else a[:57] + "..."
            b = b if len(b) <= 60 else b[:57] + "..."
            parts.append(f"{key}: stored {a}, now {b}")
    return "; ".join(parts) or "same settings, different fingerprint"

"""`ActivationStore`: activations of a dataset run on disk, one safetensors file per chunk.

Layout of a store folder::

    manifest.json                run config, its fingerprint, one record per example
    chunk_000000.safetensors     examples 0 .. chunk_size-1
    chunk_000001.safetensors     the next chunk_size examples, ...

Each chunk file holds one tensor per collected array (``[chunk, layers, ...]`` float32, e.g.
``"gate"``, ``"gate.position"``, ``"logits"``) and ``"example_index"`` (int64), and carries the
run's fingerprint in its metadata. A chunk is written to a hidden temporary name and renamed
into place (`os.replace`), so a process killed mid-write leaves at most a ``.chunk_*.tmp``
file, which is never counted and is removed by the next run. The manifest is written the same
way. A chunk counts as done if and only if its final file exists.

Reading never needs more memory than its result plus one chunk: `load` fills a preallocated
tensor chunk by chunk (each chunk file is memory-mapped by safetensors), and `iter_chunks`
streams chunks for datasets whose activations do not fit in RAM. One writer at a time: opening a
store to write removes every temporary file in it.

Example:
    >>> import tempfile, torch
    >>> store = ActivationStore.create(tempfile.mkdtemp(), config={"seed": 0},
    ...                                records=[{"label": i % 2} for i in range(3)], chunk_size=2)
    >>> store.write_chunk(0, {"gate": torch.ones(2, 4, 8)})
    >>> store.complete, len(store), store.labels
    (False, 2, [0, 1])
    >>> store.write_chunk(1, {"gate": torch.zeros(1, 4, 8)})
    >>> store.complete, store.load("gate").shape
    (True, torch.Size([3, 4, 8]))
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from vlm_lens.errors import StoreConfigError

MANIFEST = "manifest.json"
FORMAT = "vlm_lens.ActivationStore"
VERSION = 1
EXAMPLE_INDEX = "example_index"
"""Key of the int64 ``[chunk]`` dataset indices in every chunk file."""

_CHUNK_RE = re.compile(r"^chunk_(\d{6})\.safetensors$")
_TMP_RE = re.compile(r"^\..*\.tmp$")


def fingerprint(config: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of `config`.

    Example:
        >>> fingerprint({"seed": 0, "batch_size": 8}) == fingerprint({"batch_size": 8, "seed": 0})
        True
        >>> fingerprint({"seed": 0})[:12]
        'bd0488843468'
    """
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ActivationStore:
    """A folder of per-chunk activation files and a manifest (see the module docstring).

    Open an existing store with ``ActivationStore(path)``; `create` makes (or reopens, to
    resume) the store of one run. `vlm_lens.data.run_dataset` does both for you.

    Attributes:
        path: the folder.
        config: the run config from the manifest.
        fingerprint: hash of `config`; every chunk file carries it.
        n_examples: number of examples of the run (done or not).
        chunk_size: examples per chunk (the last chunk may be shorter).

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp()
        >>> ActivationStore.create(path, config={}, records=[{}, {}], chunk_size=1).n_chunks
        2
        >>> len(ActivationStore(path)), ActivationStore(path).complete  # reopened, nothing written
        (0, False)
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise StoreConfigError(
                f"{self.path} is not an activation store (no {MANIFEST}); create one with "
                "vlm_lens.data.run_dataset or ActivationStore.create"
            )
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise StoreConfigError(f"{manifest_path} is not a version-{VERSION} {FORMAT} manifest")
        self._manifest = manifest
        self.config: dict[str, Any] = manifest["config"]
        self.fingerprint: str = manifest["fingerprint"]
        self.n_examples: int = manifest["n_examples"]
        self.chunk_size: int = manifest["chunk_size"]
        self._records: list[dict[str, Any]] = manifest["records"]

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        config: Mapping[str, Any],
        records: Sequence[Mapping[str, Any]],
        chunk_size: int,
        overwrite: bool = False,
    ) -> ActivationStore:
        """Create the store of a run, or reopen it if it holds the same run.

        Args:
            path: the folder (created if missing).
            config: JSON-able description of the run; its `fingerprint` identifies the run.
            records: one JSON-able dict per example (``"id"``, ``"label"``, ``"metadata"``).
            chunk_size: examples per chunk.
            overwrite: delete the store's files (manifest, chunks, temporary files) first.

        Raises:
            StoreConfigError: if `path` holds a store of another run (naming what differs),
                or chunk files without a manifest, and `overwrite` is false.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        folder = Path(path)
        full = {**dict(config), "n_examples": len(records), "chunk_size": chunk_size}
        digest = fingerprint(full)
        if overwrite:
            _clear(folder)
        if (folder / MANIFEST).is_file():
            existing = cls(folder)
            if existing.fingerprint != digest:
                raise StoreConfigError(
                    f"{folder} holds another run ({_diff(existing.config, full)}); resuming "
                    "would mix two runs. Pass overwrite=True to replace it, or use another folder"
                )
            existing.clean_temporary()
            return existing
        if folder.is_dir() and any(_CHUNK_RE.match(p.name) for p in folder.iterdir()):
            raise StoreConfigError(
                f"{folder} has chunk files but no {MANIFEST}; pass overwrite=True to replace them"
            )
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": digest,
            "n_examples": len(records),
            "chunk_size": chunk_size,
            "config": full,
            "records": [dict(r) for r in records],
        }
        _atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, default=str))
        store = cls(folder)
        store.clean_temporary()
        return store

    def write_chunk(self, chunk: int, tensors: Mapping[str, Tensor]) -> None:
        """Write chunk `chunk` atomically (temporary file, fsync, rename).

        Args:
            chunk: chunk number, ``0 .. n_chunks - 1``.
            tensors: arrays with a leading dimension equal to the chunk's number of examples.

        Raises:
            ValueError: for a chunk number out of range or a wrong leading dimension.
        """
        start, stop = self.chunk_bounds(chunk)
        data = {}
        for name, tensor in tensors.items():
            if name == EXAMPLE_INDEX or tensor.shape[:1] != (stop - start,):
                raise ValueError(
                    f"array {name!r} of chunk {chunk} must have a leading dimension of "
                    f"{stop - start} (its examples) and not be named {EXAMPLE_INDEX!r}; got "
                    f"shape {tuple(tensor.shape)}"
                )
            data[name] = tensor.detach().to("cpu").contiguous()
        data[EXAMPLE_INDEX] = torch.arange(start, stop, dtype=torch.int64)
        final = self._chunk_path(chunk)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        metadata = {"fingerprint": self.fingerprint, "chunk": str(chunk)}
        save_file(data, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)

    def clean_temporary(self) -> None:
        """Remove temporary files left by a killed writer (never counted as chunks)."""
        for p in self.path.iterdir():
            if _TMP_RE.match(p.name):
                p.unlink(missing_ok=True)

    # ------------------------------------------------------------------ progress
    @property
    def n_chunks(self) -> int:
        """Number of chunks of the run."""
        return -(-self.n_examples // self.chunk_size)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """``(start, stop)`` example indices of a chunk."""
        if not 0 <= chunk < self.n_chunks:
            raise ValueError(f"chunk {chunk} is outside 0..{self.n_chunks - 1}")
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_examples)

    @property
    def completed_chunks(self) -> list[int]:
        """Chunk numbers whose file exists, in order."""
        found = []
        for p in self.path.iterdir():
            match = _CHUNK_RE.match(p.name)
            if match and int(match.group(1)) < self.n_chunks:
                found.append(int(match.group(1)))
        return sorted(found)

    def has_chunk(self, chunk: int) -> bool:
        """Whether chunk `chunk` is on disk."""
        return self._chunk_path(chunk).is_file()

    @property
    def complete(self) -> bool:
        """Whether every chunk is on disk."""
        return len(self.completed_chunks) == self.n_chunks

    @property
    def example_indices(self) -> list[int]:
        """Dataset indices of the examples on disk, in order (all of them once `complete`)."""
        out: list[int] = []
        for chunk in self.completed_chunks:
            out.extend(range(*self.chunk_bounds(chunk)))
        return out

    def __len__(self) -> int:
        """Number of examples on disk."""
        return sum(stop - start for start, stop in map(self.chunk_bounds, self.completed_chunks))

    # ------------------------------------------------------------------ reading
    @property
    def records(self) -> list[dict[str, Any]]:
        """Per-example records (``id``, ``label``, ``metadata``) aligned with `example_indices`."""
        return [self._records[i] for i in self.example_indices]

    @property
    def labels(self) -> list[Any]:
        """Labels aligned with `example_indices` (and with `load`)."""
        return [r.get("label") for r in self.records]

    @property
    def ids(self) -> list[Any]:
        """Example ids aligned with `example_indices`."""
        return [r.get("id") for r in self.records]

    @property
    def names(self) -> list[str]:
        """Names of the stored arrays (from the first chunk on disk; empty before any)."""
        chunks = self.completed_chunks
        if not chunks:
            return []
        with safe_open(str(self._chunk_path(chunks[0])), framework="pt") as f:
            present = list(f.keys())
        return sorted(k for k in present if k != EXAMPLE_INDEX)

    def iter_chunks(
        self, names: Sequence[str] | None = None
    ) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
        """Yield ``(example_indices, {name: [chunk, ...]})`` per chunk on disk, in order.

        Only one chunk is in memory at a time.
        """
        for chunk in self.completed_chunks:
            path = self._chunk_path(chunk)
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("fingerprint") != self.fingerprint:
                    raise StoreConfigError(
                        f"{path} was written by another run than {self.path / MANIFEST}; "
                        "delete it or rerun with overwrite=True"
                    )
                present = list(f.keys())
                keys = [k for k in present if k != EXAMPLE_INDEX] if names is None else names
                missing = [k for k in keys if k not in present]
                if missing:
                    raise KeyError(f"no array {missing[0]!r} in the store; arrays: {self.names}")
                tensors = {k: f.get_tensor(k) for k in keys}
                indices = f.get_tensor(EXAMPLE_INDEX).tolist()
            yield indices, tensors

    def load(
        self, name: str, *, layers: Sequence[int] | None = None, allow_partial: bool = False
    ) -> Tensor:
        """One array for every example on disk, in example order.

        Memory: the result (``len(store) x layers x d`` floats) plus one chunk while reading.
        Select `layers` to read less; use `iter_chunks` to stream.

        Args:
            name: a probe name, ``"<probe>.position"`` or ``"logits"`` (see `names`).
            layers: indices along the layer axis (positions in the probe's list of layers).
            allow_partial: return the examples done so far when the run is not complete.

        Raises:
            StoreConfigError: if the run is incomplete and `allow_partial` is false.
            KeyError: for an unknown name.
        """
        if not self.complete and not allow_partial:
            raise StoreConfigError(
                f"{self.path} is incomplete ({len(self)} of {self.n_examples} examples); "
                "finish it with run_dataset(..., resume=True) or pass allow_partial=True"
            )
        out: Tensor | None = None
        offset = 0
        for _, tensors in self.iter_chunks([name]):
            part = tensors[name]
            if layers is not None:
                part = part[:, list(layers)]
            if out is None:
                out = torch.empty((len(self), *part.shape[1:]), dtype=part.dtype)
            out[offset : offset + len(part)] = part
            offset += len(part)
            del tensors, part
        if out is None:
            raise KeyError(f"the store at {self.path} has no chunks yet")
        return out

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, {len(self)}/{self.n_examples} examples, "
            f"{len(self.completed_chunks)}/{self.n_chunks} chunks)"
        )

    def _chunk_path(self, chunk: int) -> Path:
        return self.path / f"chunk_{chunk:06d}.safetensors"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _clear(folder: Path) -> None:
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name == MANIFEST or _CHUNK_RE.match(p.name) or _TMP_RE.match(p.name):
            p.unlink()


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            shown_a, shown_b = _short(a), _short(b)
            parts.append(f"{key}: stored {shown_a}, now {shown_b}")
    return "; ".join(parts) or "same settings, different fingerprint"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."

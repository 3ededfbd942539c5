"""`ActivationStore`: activations of a dataset run on disk, one safetensors file per chunk.

Layout of a store folder::

    manifest.json                run config, its fingerprint, one record per example
    chunk_000000.safetensors     examples 0 .. chunk_size-1
    chunk_000001.safetensors     the next chunk_size examples, ...

Each chunk file holds one tensor per collected array (``[chunk, layers, ...]`` float32, e.g.
``"gate"``, ``"gate.position"``, ``"logits"``) and ``"example_index"`` (int64). Its metadata
carries the run's fingerprint, its chunk number, its example range and a checksum (XXH3-128,
`vlm_lens.data.digest`) of every tensor. Every read checks them: a chunk that is truncated, has
changed bytes, was copied over another chunk (its example indices say so) or was written by
another run raises `StoreDamagedError` naming the file and the fix, never returns wrong data;
`run_dataset` checks every chunk on disk before it resumes and recomputes the damaged ones.

A chunk is written to a hidden temporary name and renamed into place (`os.replace`), so a
process killed mid-write leaves at most a ``.chunk_*.tmp`` file, which is never counted and is
removed by the next run. The manifest is written the same way; a damaged manifest is an error
that says how to rebuild it (`create`, which `run_dataset` calls, rebuilds it from the run's
config when the chunks on disk carry that run's fingerprint). A chunk counts as done if its
final file exists (`completed_chunks`); `damaged_chunks` checks them.

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
    >>> store.complete, store.load("gate").shape, store.damaged_chunks()
    (True, torch.Size([3, 4, 8]), {})
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from vlm_lens.data.digest import tensor_digest
from vlm_lens.errors import StoreConfigError, StoreDamagedError

MANIFEST = "manifest.json"
FORMAT = "vlm_lens.ActivationStore"
VERSION = 2
"""Store format version: 2 added the per-chunk checksums and example ranges."""
EXAMPLE_INDEX = "example_index"
"""Key of the int64 ``[chunk]`` dataset indices in every chunk file."""

_CHUNK_RE = re.compile(r"^chunk_(\d{6})\.safetensors$")
_TMP_RE = re.compile(r"^\..*\.tmp$")
_FIX = (
    "rerun run_dataset with the same arguments (resume=True): it checks every chunk and "
    "recomputes the damaged ones; or delete the file and rerun"
)


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
        example_digests: one digest per example of its inputs (prompt, images), or ``None``.

    Raises:
        StoreConfigError: for a folder without a manifest, or one of another store version.
        StoreDamagedError: for a manifest that is not valid (naming the problem and the fix).

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
        manifest = _read_manifest(self.path / MANIFEST)
        self._manifest = manifest
        self.config: dict[str, Any] = manifest["config"]
        self.fingerprint: str = manifest["fingerprint"]
        self.n_examples: int = manifest["n_examples"]
        self.chunk_size: int = manifest["chunk_size"]
        self._records: list[dict[str, Any]] = manifest["records"]
        self.example_digests: list[str] | None = manifest.get("example_digests")

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
        example_digests: Sequence[str] | None = None,
        clean: bool = True,
    ) -> ActivationStore:
        """Create the store of a run, or reopen it if it holds the same run.

        A damaged (or missing) manifest next to chunk files of this same run (their
        fingerprint says so) is rebuilt from `config`, with a warning; the chunks are kept.

        Args:
            path: the folder (created if missing).
            config: JSON-able description of the run; its `fingerprint` identifies the run.
            records: one JSON-able dict per example (``"id"``, ``"label"``, ``"metadata"``).
            chunk_size: examples per chunk.
            overwrite: delete the store's files (manifest, chunks, temporary files) first.
            example_digests: one digest per example of its inputs; a store of another run
                then names the first examples whose inputs differ.
            clean: remove temporary files left by a killed writer (``False`` when other
                writers share the folder, `vlm_lens.data.distributed`).

        Raises:
            StoreConfigError: if `path` holds a store of another run (naming what differs),
                or chunk files of another run without a valid manifest, and `overwrite` is
                false.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if example_digests is not None and len(example_digests) != len(records):
            raise ValueError(f"{len(example_digests)} example digests for {len(records)} records")
        folder = Path(path)
        full = {**dict(config), "n_examples": len(records), "chunk_size": chunk_size}
        full = json.loads(json.dumps(full, default=str))  # as it will read back
        digest = fingerprint(full)
        if overwrite:
            _clear(folder)
        damage: StoreDamagedError | None = None
        if (folder / MANIFEST).is_file():
            try:
                existing = cls(folder)
            except StoreDamagedError as exc:
                damage = exc
            else:
                if existing.fingerprint != digest:
                    what = _diff(existing.config, full)
                    changed = _changed_examples(existing, example_digests)
                    raise StoreConfigError(
                        f"{folder} holds another run ({what}{changed}); resuming would mix two "
                        "runs. Pass overwrite=True to replace it, or use another folder"
                    )
                if clean:
                    existing.clean_temporary()
                return existing
        chunks = _chunk_files(folder)
        if chunks:
            foreign = [p.name for p in chunks if _header_fingerprint(p) not in (digest, None)]
            if foreign:
                state = "a damaged" if damage else "no"
                raise StoreConfigError(
                    f"{folder} has chunk files of another run ({', '.join(foreign[:3])}"
                    f"{'...' if len(foreign) > 3 else ''}) and {state} {MANIFEST}; pass "
                    "overwrite=True to replace them, or use another folder"
                )
            warnings.warn(
                f"{folder}: {damage or f'no {MANIFEST}'}; rebuilt it from this run's config "
                f"({len(chunks)} chunk file(s) of this run kept, each checked before resuming)",
                stacklevel=2,
            )
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": digest,
            "n_examples": len(records),
            "chunk_size": chunk_size,
            "config": full,
            "records": json.loads(json.dumps([dict(r) for r in records], default=str)),
            "example_digests": None if example_digests is None else list(example_digests),
        }
        _atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
        store = cls(folder)
        if clean:
            store.clean_temporary()
        return store

    def write_chunk(self, chunk: int, tensors: Mapping[str, Tensor]) -> None:
        """Write chunk `chunk` atomically (temporary file, fsync, rename), with its checksums.

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
        metadata = {
            "fingerprint": self.fingerprint,
            "chunk": str(chunk),
            "examples": f"{start}:{stop}",
            "checksums": json.dumps({k: tensor_digest(v) for k, v in sorted(data.items())}),
        }
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
        """Chunk numbers whose file exists, in order (`damaged_chunks` checks them)."""
        found = []
        for p in _chunk_files(self.path):
            number = int(p.name[6:12])
            if number < self.n_chunks:
                found.append(number)
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

    # ------------------------------------------------------------------ checking
    def chunk_problem(self, chunk: int) -> str | None:
        """What is wrong with chunk `chunk`'s file (every tensor read and checked), or
        ``None`` when it is sound. A missing file is a problem too."""
        if not self.has_chunk(chunk):
            return "the file is missing"
        try:
            self._read_chunk(chunk, None)
        except StoreDamagedError as exc:
            return exc.args[0].problem if isinstance(exc.args[0], _Problem) else str(exc)
        return None

    def damaged_chunks(self, chunks: Sequence[int] | None = None) -> dict[int, str]:
        """``{chunk: problem}`` for the chunk files on disk (or `chunks` of them) that fail
        their checks: unreadable or truncated, a checksum that differs, other example
        indices than the chunk's, or another run's fingerprint. Reads every chunk once."""
        chosen = self.completed_chunks if chunks is None else list(chunks)
        out = {}
        for chunk in chosen:
            if self.has_chunk(chunk):
                problem = self.chunk_problem(chunk)
                if problem is not None:
                    out[chunk] = problem
        return out

    def remove_damaged(self, chunks: Sequence[int] | None = None) -> dict[int, str]:
        """Delete the damaged chunk files (`damaged_chunks`), warning for each, so that a
        resumed run recomputes them; returns them."""
        damaged = self.damaged_chunks(chunks)
        for chunk, problem in damaged.items():
            path = self._chunk_path(chunk)
            warnings.warn(f"{path} is damaged ({problem}); recomputing it", stacklevel=2)
            path.unlink(missing_ok=True)
        return damaged

    def foreign_chunks(self) -> list[int]:
        """Chunks on disk whose metadata carries another run's fingerprint (headers only, a
        cheap check; `damaged_chunks` reads everything)."""
        return [
            c
            for c in self.completed_chunks
            if _header_fingerprint(self._chunk_path(c)) != self.fingerprint
        ]

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
        with self._open(chunks[0]) as (f, _):
            present = list(f.keys())
        return sorted(k for k in present if k != EXAMPLE_INDEX)

    def iter_chunks(
        self, names: Sequence[str] | None = None
    ) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
        """Yield ``(example_indices, {name: [chunk, ...]})`` per chunk on disk, in order.

        Only one chunk is in memory at a time. Each tensor read is checked against its
        checksum, and the chunk's example indices against its place in the store.

        Raises:
            StoreDamagedError: for a chunk that fails a check, naming it and the fix.
            KeyError: for an unknown name.
        """
        for chunk in self.completed_chunks:
            yield self._read_chunk(chunk, names)

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
            StoreDamagedError: for a chunk that fails its checks (see `iter_chunks`).
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

    # ------------------------------------------------------------------ internals
    def _chunk_path(self, chunk: int) -> Path:
        return self.path / f"chunk_{chunk:06d}.safetensors"

    def _damaged(self, chunk: int, problem: str) -> StoreDamagedError:
        return StoreDamagedError(_Problem(self._chunk_path(chunk), problem))

    def _open(self, chunk: int) -> _Opened:
        return _Opened(self, chunk)

    def _read_chunk(
        self, chunk: int, names: Sequence[str] | None
    ) -> tuple[list[int], dict[str, Tensor]]:
        start, stop = self.chunk_bounds(chunk)
        with self._open(chunk) as (f, checksums):
            present = [k for k in f.keys() if k != EXAMPLE_INDEX]  # noqa: SIM118 - not a dict
            keys = present if names is None else list(names)
            missing = [k for k in keys if k not in present]
            if missing:
                raise KeyError(f"no array {missing[0]!r} in the store; arrays: {sorted(present)}")
            try:
                tensors = {k: f.get_tensor(k) for k in [*keys, EXAMPLE_INDEX]}
            except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
                raise self._damaged(chunk, f"it cannot be read ({exc})") from None
        for key, tensor in tensors.items():
            if tensor_digest(tensor) != checksums.get(key):
                raise self._damaged(chunk, f"the checksum of {key!r} does not match its bytes")
        indices = tensors.pop(EXAMPLE_INDEX)
        if not torch.equal(indices, torch.arange(start, stop, dtype=torch.int64)):
            raise self._damaged(
                chunk, f"it holds examples {_span(indices)}, not {start}..{stop - 1}"
            )
        return indices.tolist(), tensors


class _Problem(str):
    """A damaged-chunk message that remembers its bare problem (for `chunk_problem`)."""

    problem: str

    def __new__(cls, path: Path, problem: str) -> _Problem:
        out = super().__new__(cls, f"{path} is damaged: {problem}. To fix it, {_FIX}")
        out.problem = problem
        return out


class _Opened:
    """``with store._open(chunk) as (safe_open handle, checksums)``, with its metadata
    checked (fingerprint, chunk number, example range, checksums present)."""

    def __init__(self, store: ActivationStore, chunk: int):
        self.store, self.chunk = store, chunk
        self._context: Any = None

    def __enter__(self) -> tuple[Any, dict[str, str]]:
        store, chunk = self.store, self.chunk
        try:
            self._context = safe_open(str(store._chunk_path(chunk)), framework="pt")
            handle = self._context.__enter__()
            meta = handle.metadata() or {}
            keys = list(handle.keys())
        except (SafetensorError, OSError, ValueError) as exc:
            raise store._damaged(
                chunk, f"it cannot be read, it is truncated or not a safetensors file ({exc})"
            ) from None
        start, stop = store.chunk_bounds(chunk)
        if meta.get("fingerprint") != store.fingerprint:
            self.__exit__(None, None, None)
            raise store._damaged(
                chunk, f"it was written by another run than {store.path / MANIFEST}"
            )
        if meta.get("chunk") != str(chunk) or meta.get("examples") != f"{start}:{stop}":
            self.__exit__(None, None, None)
            raise store._damaged(
                chunk,
                f"it is chunk {meta.get('chunk')} (examples {meta.get('examples')}), not chunk "
                f"{chunk} (examples {start}:{stop}): it was copied or renamed",
            )
        try:
            checksums = json.loads(meta.get("checksums", ""))
        except ValueError:
            checksums = None
        if not isinstance(checksums, dict) or set(checksums) != set(keys):
            self.__exit__(None, None, None)
            raise store._damaged(chunk, "its checksums are missing or do not list its arrays")
        return handle, checksums

    def __exit__(self, *exc: Any) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)
            self._context = None


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at `path`, checked, or a clear error."""
    if not path.is_file():
        raise StoreConfigError(
            f"{path.parent} is not an activation store (no {MANIFEST}); create one with "
            "vlm_lens.data.run_dataset or ActivationStore.create"
        )
    fix = (
        "rerun run_dataset with the same arguments to rebuild it (chunks of that run are kept, "
        "each checked), or pass overwrite=True to start over"
    )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreDamagedError(f"{path} is damaged: it is not valid JSON ({exc}); {fix}") from None
    if isinstance(manifest, dict) and manifest.get("format") == FORMAT:
        version = manifest.get("version")
        if version != VERSION:
            raise StoreConfigError(
                f"{path} is a version-{version} {FORMAT} manifest; this vlm_lens reads version "
                f"{VERSION} (chunks with checksums). Rerun with overwrite=True to recompute it"
            )
    problem = _manifest_problem(manifest)
    if problem:
        raise StoreDamagedError(f"{path} is damaged: {problem}; {fix}")
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"it is not a {FORMAT} manifest"
    kinds = {
        "fingerprint": str,
        "n_examples": int,
        "chunk_size": int,
        "config": dict,
        "records": list,
    }
    for key, kind in kinds.items():
        if not isinstance(manifest.get(key), kind):
            return f"its {key!r} is missing or not a {kind.__name__}"
    if manifest["n_examples"] < 1 or manifest["chunk_size"] < 1:
        return "its n_examples and chunk_size must be >= 1"
    if len(manifest["records"]) != manifest["n_examples"]:
        return f"it has {len(manifest['records'])} records for {manifest['n_examples']} examples"
    digests = manifest.get("example_digests")
    if digests is not None and (
        not isinstance(digests, list) or len(digests) != manifest["n_examples"]
    ):
        return "its example_digests do not match its examples"
    config = manifest["config"]
    if (
        config.get("n_examples") != manifest["n_examples"]
        or config.get("chunk_size") != manifest["chunk_size"]
    ):
        return "its config does not match its n_examples and chunk_size"
    if fingerprint(config) != manifest["fingerprint"]:
        return "its fingerprint is not that of its config (the file was edited or damaged)"
    return None


def _chunk_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _CHUNK_RE.match(p.name))


def _header_fingerprint(path: Path) -> str | None:
    """The fingerprint in a chunk file's metadata, or ``None`` if it cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("fingerprint")
    except (SafetensorError, OSError, ValueError):
        return None


def _span(indices: Tensor) -> str:
    values = indices.tolist()
    if not values:
        return "none"
    return f"{values[0]}..{values[-1]}" if len(values) > 1 else str(values[0])


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


def _diff(old: Any, new: Any, where: str = "", limit: int = 4) -> str:
    """What differs between two configs, leaf by leaf (``model.weights.<name>: stored ...,
    now ...``), the first `limit` differences and how many more."""
    found: list[str] = []
    _collect_diff(old, new, where, found)
    if not found:
        return "same settings, different fingerprint"
    shown = "; ".join(found[:limit])
    return shown + (f"; and {len(found) - limit} more" if len(found) > limit else "")


def _collect_diff(old: Any, new: Any, where: str, found: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            _collect_diff(
                old.get(key), new.get(key), f"{where}.{key}" if where else str(key), found
            )
        return
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _collect_diff(a, b, f"{where}[{i}]", found)
        return
    if _canonical(old) != _canonical(new):
        found.append(f"{where}: stored {_short(old)}, now {_short(new)}")


def _changed_examples(store: ActivationStore, digests: Sequence[str] | None) -> str:
    old = store.example_digests
    if old is None or digests is None or len(old) != len(digests):
        return ""
    changed = [i for i, (a, b) in enumerate(zip(old, digests, strict=True)) if a != b]
    if not changed:
        return ""
    shown = ", ".join(f"{i} (id={store._records[i].get('id')!r})" for i in changed[:3])
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    return (
        f"; the inputs (prompt, label, id, metadata or image bytes) of {len(changed)} example(s) "
        f"differ: {shown}{more}"
    )


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."

"""Save and load result objects: `save_result` / `load_result`, exactly (arrays bit for bit).

Every result of `vlm_lens.analysis` (and `vlm_lens.evaluate`'s `EvaluationResult`, the
experiments' `ModelRun` and `GateMeasurement`, the engine's `SweepResult`) is a registered
dataclass; `save_result` writes it, with its ``meta`` (what model, inputs and settings produced
it, `vlm_lens.analysis.provenance`), to one file:

* ``.json``: one readable JSON document. Arrays are ``{"dtype", "shape", "data"}`` with
  ``data`` a flat list, or base64 little-endian bytes (``"b64"``) when the array holds NaN or
  inf; strings and object arrays stay JSON.
* ``.safetensors``: every numeric array and tensor in safetensors, the rest (and ``meta``) as
  JSON in its header; for large results (`per_prompt` of many prompts, representations).

`load_result` rebuilds the same object: NumPy arrays come back as NumPy arrays of the same
dtype, tensors as tensors (``torch.equal`` to the saved ones), tuples as tuples, NaN as NaN; so
every `vlm_lens.viz` figure builds from a loaded result as from the original. Plain values
(a tensor from `representations`, a dict of them) save too, with ``meta=`` given by hand;
`load_meta` reads any file's ``meta`` without its arrays.

Example:
    >>> import tempfile, numpy as np
    >>> from vlm_lens.analysis import OverlapResult
    >>> chi = OverlapResult({"gate": np.array([0.1, np.nan])}, chance=0.1, k=5, n=50,
    ...                     meta={"model": {"name": "demo"}})
    >>> path = save_result(chi, tempfile.mkdtemp() + "/chi.json")
    >>> back = load_result(path)
    >>> back.overlap["gate"].tolist()[0], bool(np.isnan(back.overlap["gate"][1])), back.meta
    (0.1, True, {'model': {'name': 'demo'}})
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from vlm_lens.errors import VLMInputError

FORMAT = "vlm_lens.result"
VERSION = 1
SUFFIXES = (".json", ".safetensors")

_TYPES: dict[str, type] = {}
"""``"module:QualName"`` -> registered dataclass."""


def register_result(cls: type) -> type:
    """Make a dataclass saveable by `save_result` (usable as a class decorator).

    Only registered classes (and the plain values `save_result` documents) are rebuilt by
    `load_result`, so a file never names arbitrary code to run.

    Raises:
        TypeError: for a class that is not a dataclass.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass; only dataclasses can be registered")
    _TYPES[_type_name(cls)] = cls
    return cls


def _type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def save_result(
    result: Any, path: str | os.PathLike[str], *, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write `result` to `path` (``.json`` or ``.safetensors``); returns the path.

    Args:
        result: a registered result object, or a plain value (tensor, array, dict, list...).
        path: the file; its suffix picks the format. Its folder is created.
        meta: extra metadata, merged over the result's own ``meta`` (in the file only).

    Raises:
        VLMInputError: for another suffix, or a value that cannot be saved.

    Example:
        >>> import tempfile, torch
        >>> x = torch.arange(6.0).reshape(2, 3)
        >>> p = save_result(x, tempfile.mkdtemp() + "/x.safetensors", meta={"site": "resid_post"})
        >>> torch.equal(load_result(p), x), load_meta(p)
        (True, {'site': 'resid_post'})
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise VLMInputError(
            f"save_result writes .json or .safetensors files, got {out.name!r}; name the file "
            "result.json (small results) or result.safetensors (large arrays)"
        )
    tensors: dict[str, torch.Tensor] | None = {} if suffix == ".safetensors" else None
    encoder = _Encoder(tensors)
    own = getattr(result, "meta", None) if _registered(result) else None
    document = {
        "format": FORMAT,
        "version": VERSION,
        "meta": encoder.encode({**dict(own or {}), **dict(meta or {})}),
        "value": encoder.encode(result),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, ensure_ascii=False, allow_nan=False)
    if tensors is None:
        out.write_text(text + "\n", encoding="utf-8")
    else:
        from safetensors.torch import save_file

        save_file(tensors, str(out), metadata={FORMAT: text})
    return out


def load_result(path: str | os.PathLike[str], expect: type | None = None) -> Any:
    """The object `save_result` wrote to `path`.

    Args:
        path: a ``.json`` or ``.safetensors`` file of `save_result`.
        expect: the class the result must be (e.g. `AttentionShareResult`), or ``None``.

    Raises:
        VLMInputError: when the file is missing, not a saved result, of another class than
            `expect`, or names a class that is not registered.
    """
    document, tensors = _read(Path(path))
    value = _Decoder(tensors).decode(document["value"])
    if expect is not None and not isinstance(value, expect):
        raise VLMInputError(
            f"{path} holds a {type(value).__name__}, not a {expect.__name__}; load it without "
            "expect= or pick the file of the result you want"
        )
    return value


def load_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta`` of a saved result (model, inputs, settings...), without loading arrays."""
    document, _ = _read(Path(path), tensors=False)
    meta: dict[str, Any] = _Decoder({}).decode(document["meta"])
    return meta


def _read(path: Path, tensors: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise VLMInputError(f"{path} does not exist; pass a file written by save_result")
    store: dict[str, torch.Tensor] = {}
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                text = (handle.metadata() or {}).get(FORMAT)
                if tensors:
                    store = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            if text is None:
                raise ValueError("no vlm_lens header")
        else:
            text = path.read_text(encoding="utf-8")
        document = json.loads(text)
    except (ValueError, OSError) as error:
        raise VLMInputError(
            f"{path} is not a result written by save_result ({error}); save results with "
            "vlm_lens.analysis.save_result"
        ) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise VLMInputError(f"{path} is not a result written by save_result (no {FORMAT} header)")
    if int(document.get("version", 0)) > VERSION:
        raise VLMInputError(
            f"{path} was written by a newer vlm_lens (format {document['version']}, this one "
            f"reads {VERSION}); upgrade vlm_lens"
        )
    return document, store


def _registered(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


class _Encoder:
    """Value -> JSON-ready structure; numeric arrays into `tensors` when given."""

    def __init__(self, tensors: dict[str, torch.Tensor] | None) -> None:
        self.tensors = tensors
        self._keys: dict[int, tuple[Any, str]] = {}

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
            return int(value)
        if isinstance(value, (float, np.floating)):
            number = float(value)
            return number if math.isfinite(number) else {"__float__": repr(number)}
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, torch.Tensor):
            return {"__tensor__": self._array(value.detach().cpu())}
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                return {"__objects__": list(value.shape), "data": self._list(value.reshape(-1))}
            if value.dtype.kind == "U":
                return {"__strings__": list(value.shape), "data": value.reshape(-1).tolist()}
            return {"__array__": self._array(value)}
        if isinstance(value, pd.DataFrame):
            columns = {str(c): self.encode(value[c].to_numpy()) for c in value.columns}
            return {"__frame__": columns, "order": [str(c) for c in value.columns]}
        if isinstance(value, Image.Image):
            return {"__image__": self.encode(np.asarray(value)), "mode": value.mode}
        if _registered(value):
            cls = type(value)
            if _type_name(cls) not in _TYPES:
                raise VLMInputError(
                    f"{cls.__name__} is not a registered result; register it with "
                    "vlm_lens.analysis.persist.register_result"
                )
            fields = {
                f.name: self.encode(getattr(value, f.name)) for f in dataclasses.fields(value)
            }
            return {"__result__": _type_name(cls), "fields": fields}
        if isinstance(value, tuple):
            return {"__tuple__": self._list(value)}
        if isinstance(value, list):
            return self._list(value)
        if isinstance(value, Mapping):
            if all(isinstance(k, str) for k in value) and not any(
                k.startswith("__") for k in value
            ):
                return {k: self.encode(v) for k, v in value.items()}
            return {"__items__": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        raise VLMInputError(
            f"cannot save a {type(value).__name__} ({value!r:.60}); results hold arrays, "
            "tensors, numbers, strings, tuples, lists, dicts, frames and images"
        )

    def _list(self, values: Any) -> list[Any]:
        return [self.encode(v) for v in values]

    def _array(self, value: np.ndarray | torch.Tensor) -> dict[str, Any]:
        is_tensor = isinstance(value, torch.Tensor)
        dtype = str(value.dtype).removeprefix("torch.")
        shape = list(value.shape)
        if self.tensors is not None:
            known = self._keys.get(id(value))
            if known is not None and known[0] is value:  # one array saved once (heatmap = shares)
                return {"dtype": dtype, "shape": shape, "key": known[1]}
            key = f"t{len(self.tensors)}"
            # copies: safetensors refuses tensors that share memory (views of one array)
            if isinstance(value, torch.Tensor):
                self.tensors[key] = value.clone(memory_format=torch.contiguous_format)
            else:
                self.tensors[key] = torch.from_numpy(value.copy())
            self._keys[id(value)] = (value, key)
            return {"dtype": dtype, "shape": shape, "key": key}
        if is_tensor:
            assert isinstance(value, torch.Tensor)
            if value.dtype == torch.bfloat16:
                raw = value.contiguous().view(torch.int16).numpy()
                return {"dtype": dtype, "shape": shape, "b64": _b64(raw)}
            value = value.contiguous().numpy()
        assert isinstance(value, np.ndarray)
        finite = value.dtype.kind not in "fc" or bool(np.isfinite(value).all())
        if finite and value.dtype.kind in "biuf":
            return {"dtype": dtype, "shape": shape, "data": value.reshape(-1).tolist()}
        return {"dtype": dtype, "shape": shape, "b64": _b64(value)}


def _b64(value: np.ndarray) -> str:
    little = value.astype(value.dtype.newbyteorder("<"), copy=False)
    return base64.b64encode(np.ascontiguousarray(little).tobytes()).decode("ascii")


class _Decoder:
    """The inverse of `_Encoder`."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def decode(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        tags: dict[str, Callable[[dict[str, Any]], Any]] = {
            "__float__": lambda d: float(d["__float__"]),
            "__tensor__": lambda d: self._tensor(d["__tensor__"]),
            "__array__": lambda d: self._tensor(d["__array__"]).numpy(),
            "__objects__": self._objects,
            "__strings__": lambda d: np.array(d["data"], dtype=str).reshape(d["__strings__"]),
            "__frame__": self._frame,
            "__image__": lambda d: Image.fromarray(self.decode(d["__image__"]), mode=d["mode"]),
            "__result__": self._result,
            "__tuple__": lambda d: tuple(self.decode(v) for v in d["__tuple__"]),
            "__items__": lambda d: {self._key(k): self.decode(v) for k, v in d["__items__"]},
        }
        for tag, build in tags.items():
            if tag in value:
                return build(value)
        return {k: self.decode(v) for k, v in value.items()}

    def _key(self, key: Any) -> Any:
        decoded = self.decode(key)
        return tuple(decoded) if isinstance(decoded, list) else decoded

    def _tensor(self, entry: dict[str, Any]) -> torch.Tensor:
        dtype = getattr(torch, entry["dtype"])
        shape = tuple(entry["shape"])
        if "key" in entry:
            return self.tensors[entry["key"]]
        if "data" in entry:
            return torch.tensor(entry["data"], dtype=dtype).reshape(shape)
        raw = base64.b64decode(entry["b64"])
        if dtype == torch.bfloat16:
            ints = np.frombuffer(raw, dtype="<i2").astype(np.int16).reshape(shape)
            return torch.from_numpy(ints.copy()).view(torch.bfloat16)
        np_dtype = np.dtype(entry["dtype"]).newbyteorder("<")
        array = np.frombuffer(raw, dtype=np_dtype).astype(np_dtype.newbyteorder("="))
        return torch.from_numpy(array.reshape(shape).copy())

    def _objects(self, entry: dict[str, Any]) -> np.ndarray:
        items = self.decode(entry["data"])
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape(entry["__objects__"])

    def _frame(self, entry: dict[str, Any]) -> pd.DataFrame:
        columns = {name: self.decode(v) for name, v in entry["__frame__"].items()}
        return pd.DataFrame({name: columns[name] for name in entry["order"]})

    def _result(self, entry: dict[str, Any]) -> Any:
        name = entry["__result__"]
        module = name.split(":")[0]
        if name not in _TYPES and module.startswith("vlm_lens."):
            importlib.import_module(module)  # registers the result types it defines
        cls = _TYPES.get(name)
        if cls is None:
            raise VLMInputError(
                f"the file holds a {name}, which is not a registered result; import the module "
                "that registers it (vlm_lens.analysis.persist.register_result) before loading"
            )
        fields = {key: self.decode(value) for key, value in entry["fields"].items()}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: v for k, v in fields.items() if k in init})


def _register_builtin() -> None:
    from vlm_lens.engine.sweep import SweepResult
    from vlm_lens.layout import ImageSpan, TokenLayout

    for cls in (SweepResult, TokenLayout, ImageSpan):
        register_result(cls)


_register_builtin()

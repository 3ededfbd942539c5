"""What produced a result: the model, the inputs and the settings, as a JSON-ready ``meta`` dict.

Every analysis result carries ``meta`` (`save_result` keeps it), so two runs' results cannot be
confused: ``meta["model"]`` names the checkpoint (``name_or_path``, family, sizes, dtype, the
processor's fingerprint and a digest of a sample of every weight), ``meta["inputs"]`` the
prompts (count, the texts, a SHA-256 of every input tensor) and ``meta["settings"]`` the
analysis' arguments (layers, positions, interventions by name...). Two results with the same
``inputs["digest"]`` and ``model["weights_digest"]`` came from the same inputs and weights.

Example:
    >>> import numpy as np
    >>> record = Provenance("neighbourhood_overlap", k=5)
    >>> record.add_array("representations", np.zeros((2, 3)))
    >>> meta = record.meta()
    >>> meta["analysis"], meta["settings"], meta["inputs"]["representations"]["shape"]
    ('neighbourhood_overlap', {'k': 5}, [2, 3])
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import numpy as np
import torch

from vlm_lens.batch import Batch, processor_fingerprint

MAX_TEXTS = 64
"""Prompts beyond this many are recorded by their digest only."""


class Provenance:
    """Accumulates the ``meta`` of one analysis run (`add` each batch, then `meta`).

    Args:
        analysis: the analysis' name.
        model: the `HookedVLM` (``None`` for analyses of arrays).
        **settings: the arguments that shape the result; callables are recorded by name.
    """

    def __init__(self, analysis: str, model: Any | None = None, **settings: Any) -> None:
        self.analysis = analysis
        self.model = model
        self.settings = {k: describe(v) for k, v in settings.items()}
        self._digest = hashlib.sha256()
        self._texts: list[str | None] = []
        self._n = 0
        self._arrays: dict[str, dict[str, Any]] = {}

    def add(self, batch: Batch) -> None:
        """Record one batch: its prompts and the bytes of every input tensor."""
        for key in sorted(batch.inputs):
            value = batch.inputs[key]
            if isinstance(value, torch.Tensor):
                self._digest.update(key.encode())
                self._digest.update(_tensor_bytes(value))
        self._n += len(batch)
        self._texts.extend(batch.texts if batch.texts is not None else [None] * len(batch))

    def add_array(self, name: str, value: Any) -> None:
        """Record an input array (representations, labels...) by shape and digest."""
        if isinstance(value, torch.Tensor):
            data, shape = _tensor_bytes(value), list(value.shape)
        else:
            array = np.asarray(value)
            shape = list(array.shape)
            if array.dtype == object or array.dtype.kind == "U":
                data = repr(array.tolist()).encode()
            else:
                data = np.ascontiguousarray(array).tobytes()
        self._arrays[name] = {"shape": shape, "digest": hashlib.sha256(data).hexdigest()}

    def meta(self) -> dict[str, Any]:
        """The ``meta`` dict: ``analysis, model, inputs, settings, vlm_lens, created``."""
        inputs: dict[str, Any] = dict(self._arrays)
        if self._n:
            inputs["n_prompts"] = self._n
            inputs["digest"] = self._digest.hexdigest()
            if len(self._texts) <= MAX_TEXTS:
                inputs["texts"] = list(self._texts)
        out: dict[str, Any] = {"analysis": self.analysis}
        if self.model is not None:
            out["model"] = model_meta(self.model)
        out.update(
            inputs=inputs,
            settings=self.settings,
            vlm_lens=_version(),
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        return out


def model_meta(model: Any) -> dict[str, Any]:
    """Name, family, sizes, dtype, processor fingerprint and a weights digest of a `HookedVLM`.

    The digest hashes the first 256 values of every parameter (cheap at any size).
    """
    hf = model.hf_model
    digest = hashlib.sha256()
    for name, param in hf.named_parameters():
        digest.update(name.encode())
        try:
            digest.update(_tensor_bytes(param.detach().reshape(-1)[:256]))
        except (RuntimeError, NotImplementedError):  # meta or offloaded weights
            digest.update(str(tuple(param.shape)).encode())
    cfg = model.cfg
    return {
        "name_or_path": str(getattr(hf, "name_or_path", "") or ""),
        "family": str(model.family),
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "d_vocab": int(cfg.d_vocab),
        "dtype": str(next(hf.parameters()).dtype).removeprefix("torch."),
        "processor": processor_fingerprint(model.processor),
        "weights_digest": digest.hexdigest(),
    }


def describe(value: Any) -> Any:
    """A JSON-ready description of a setting: numbers and strings as they are, sequences and
    mappings element-wise, callables by name, tensors by shape and values when small."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 64 else f"tensor{list(value.shape)}"
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"array{list(value.shape)}"
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [describe(v) for v in items]
    if callable(value):
        return str(getattr(value, "__name__", None) or repr(value))
    return repr(value)


def _version() -> str:
    try:
        return metadata.version("vlm-lens")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return "unknown"


def _tensor_bytes(value: torch.Tensor) -> bytes:
    tensor = value.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return bytes(tensor.numpy().tobytes()) + str(tensor.dtype).encode()

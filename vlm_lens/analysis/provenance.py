"""What produced a result: the model, the inputs and the settings, as a JSON-ready ``meta`` dict.

Every analysis result carries ``meta`` (`save_result` keeps it), so two runs' results cannot be
confused: ``meta["model"]`` names the checkpoint (``name_or_path``, family, sizes, dtype, the
processor's fingerprint and a digest of every weight), ``meta["inputs"]`` the
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
import weakref
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import numpy as np
import torch
from torch import nn

from vlm_lens.batch import Batch, processor_fingerprint
from vlm_lens.data.digest import weights_digests
from vlm_lens.engine.compat import tensor_version

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


_WEIGHT_DIGESTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], str]] = (
    weakref.WeakKeyDictionary()
)
"""Per model: the state of its tensors (identity, storage, in-place edits) and their digest."""


def weights_digest(module: nn.Module) -> str:
    """One digest of every value of every parameter and buffer of `module`
    (`vlm_lens.data.digest.weights_digests`, XXH3), recomputed only when a tensor's state
    moved since the last call: replaced, edited in place (its version counter), or changed in
    its first 64 values. An edit through ``param.data`` beyond the first 64 values bumps no
    counter and is not seen until the module is hashed anew (`forget_weights_digest`).

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> before = weights_digest(layer)
        >>> with torch.no_grad():
        ...     layer.weight[-1, -1] += 1  # the last value only
        >>> weights_digest(layer) != before
        True
    """
    state = tuple(_tensor_state(t) for t in [*module.parameters(), *module.buffers()])
    cached = _WEIGHT_DIGESTS.get(module)
    if cached is not None and cached[0] == state:
        return cached[1]
    digest = hashlib.sha256()
    try:
        for name, value in sorted(weights_digests(module).items()):
            digest.update(f"{name}={value};".encode())
    except ValueError:  # meta tensors without values anywhere: only their names and shapes
        digest.update(b"shapes only;")
        for name, tensor in module.named_parameters():
            digest.update(f"{name}={tuple(tensor.shape)};".encode())
    _WEIGHT_DIGESTS[module] = (state, digest.hexdigest())
    return digest.hexdigest()


def forget_weights_digest(module: nn.Module) -> None:
    """Make the next `weights_digest` of `module` hash every value again.

    Example:
        >>> forget_weights_digest(nn.Linear(3, 2))
    """
    _WEIGHT_DIGESTS.pop(module, None)


def _tensor_state(tensor: torch.Tensor) -> tuple[Any, ...]:
    if tensor.device.type == "meta":
        return (id(tensor), "meta")
    head = tensor.detach().reshape(-1)[:64]
    return (id(tensor), tensor.data_ptr(), tensor_version(tensor), _tensor_bytes(head))


def model_meta(model: Any) -> dict[str, Any]:
    """Name, family, sizes, dtype, processor fingerprint and a weights digest of a `HookedVLM`.

    The digest covers every value of every weight (`weights_digest`; hashed once per model
    and again only after a weight changed).
    """
    hf = model.hf_model
    cfg = model.cfg
    return {
        "name_or_path": str(getattr(hf, "name_or_path", "") or ""),
        "family": str(model.family),
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "d_vocab": int(cfg.d_vocab),
        "dtype": str(next(hf.parameters()).dtype).removeprefix("torch."),
        "processor": processor_fingerprint(model.processor),
        "weights_digest": weights_digest(hf),
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

"""`model_identity`: everything about a model that changes the numbers a dataset run stores.

A store's fingerprint covers this dict (with the probes, the seed, the prompts and the image
contents, `vlm_lens.data.runner`), so resuming a store with anything here changed is refused,
naming what differs:

* ``weights``: a digest of every parameter and buffer, all their bytes
  (`vlm_lens.data.digest.weights_digests`), by name;
* ``hooks``: every hook active on the model, fingerprinted by content
  (`vlm_lens.data.hook_state.active_hooks`);
* ``attention``: the attention implementation of the model and of each sub-model (the
  language model, the vision tower...), in the nested form of ``set_attn_implementation``;
* ``dtype``, ``devices`` (the device types holding weights: ``["cpu"]``, ``["cuda"]``; kernels
  differ between them, device numbers do not matter), and ``versions`` of torch and
  transformers (their kernels and model code).

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny
    >>> tiny = build_tiny("llava")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> identity = model_identity(model)
    >>> identity["family"], identity["attention"][""], identity["hooks"], identity["devices"]
    ('llava', 'eager', [], ['cpu'])
    >>> len(identity["weights"]) == len(dict(model.hf_model.named_parameters())) + len(
    ...     dict(model.hf_model.named_buffers()))
    True
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

from vlm_lens.data.digest import weights_digests
from vlm_lens.data.hook_state import active_hooks
from vlm_lens.engine.compat import attention_implementations


def model_identity(model: Any) -> dict[str, Any]:
    """A JSON-able description of what in `model` determines its activations.

    Args:
        model: a `vlm_lens.HookedVLM`.

    Raises:
        HookFingerprintError: for an active hook whose state cannot be fingerprinted.
    """
    hf = model.hf_model
    config = getattr(hf, "config", None)
    devices = sorted({t.device.type for t in [*hf.parameters(), *hf.buffers()]} - {"meta"})
    return {
        "family": model.family,
        "name_or_path": str(getattr(config, "_name_or_path", "")),
        "n_layers": int(model.cfg.n_layers),
        "d_model": int(model.cfg.d_model),
        "dtype": str(model.dtype),
        "devices": devices,
        "attention": attention_implementations(config),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "hooks": active_hooks(model),
        "weights": weights_digests(hf),
    }

"""Choosing how many prompts go into one forward pass from the memory that is free.

`auto_batch_size` divides a share of the free memory of the model's device (the least free of
its devices for a sharded model; CUDA:
``torch.cuda.mem_get_info``; CPU: ``MemAvailable`` of ``/proc/meminfo``) by an estimate of what
one sequence needs at the peak of a forward pass (`forward_bytes_per_sequence`): the live
activations of one decoder layer on the fast attention path (residual, norm output, q/k/v,
attention output, the MLP's gate/up/activation), the logits, and, when attention runs eager, the
``[heads, pos, pos]`` scores and pattern. It is deliberately conservative (only `fraction` of the
free memory); the weights are already resident and not counted.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny
    >>> tiny = build_tiny("llava")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> forward_bytes_per_sequence(model, 100) > 0
    True
    >>> 1 <= auto_batch_size(model, 100, maximum=16) <= 16
    True
"""

from __future__ import annotations

import os
from typing import Any

import torch


def available_memory(device: torch.device | str) -> int:
    """Free bytes on `device` (CUDA: ``mem_get_info``; CPU: ``MemAvailable``)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover (not Linux)
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def model_devices(model: Any) -> tuple[torch.device, ...]:
    """The devices `model` runs on (``model.devices``, else ``(model.device,)``).

    The budgets here take the least free memory among them: conservative for a model sharded
    over several GPUs, where each holds only its layers' activations and keys and values.
    """
    devices = tuple(getattr(model, "devices", None) or ())
    return devices or (torch.device(model.device),)


def forward_bytes_per_sequence(model: Any, seq_len: int, *, kv_cache: bool = False) -> int:
    """Peak activation bytes one sequence of `seq_len` positions needs in a forward pass
    (plus its keys and values in every layer with `kv_cache`, as a sweep's prefix keeps)."""
    cfg = model.cfg
    size = torch.finfo(model.dtype).bits // 8
    d_model, d_mlp = int(cfg.d_model), int(getattr(cfg, "d_mlp", 0) or 4 * cfg.d_model)
    per_position = (8 * d_model + 3 * d_mlp + int(cfg.d_vocab)) * size
    if model.attn_implementation == "eager":
        per_position += 2 * int(cfg.n_heads) * seq_len * size + int(cfg.n_heads) * seq_len * 4
    if kv_cache:
        kv_heads = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
        per_position += 2 * int(cfg.n_layers) * kv_heads * int(cfg.d_head) * size
    return seq_len * per_position


def auto_batch_size(
    model: Any, seq_len: int, *, fraction: float = 0.5, maximum: int = 64, kv_cache: bool = False
) -> int:
    """The largest batch (at most `maximum`, at least 1) whose forward pass should fit in
    `fraction` of the free memory of the model's device; with `kv_cache`, also the prefix
    cache a sweep keeps (`vlm_lens.analysis.run_sweep`).

    Raises:
        ValueError: for `fraction` outside ``(0, 1]`` or a non-positive `seq_len`.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    budget = min(available_memory(d) for d in model_devices(model)) * fraction
    need = forward_bytes_per_sequence(model, seq_len, kv_cache=kv_cache)
    return max(1, min(maximum, int(budget // need)))

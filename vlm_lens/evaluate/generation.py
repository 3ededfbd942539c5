"""One batch under many conditions, sharing the clean prefix.

Every condition whose hooks are an `Intervention` knows the first position it can change
(``earliest``). The positions before the smallest such position over the conditions that
leave the image alone are the clean run's, so they are computed once per batch
(`HookedVLM.prefix_cache`) and each of those conditions generates from a copy of that cache
(`HookedVLM.generate(prefix=...)`) or runs only its suffix (`HookedVLM.run_suffix`, for the
last token's residual). A condition that changes image positions (``random``), a hook list
that is not an `Intervention`, and a batch whose positions Hugging Face ``generate`` numbers
differently from the prefix pass (padding; `HookedVLM.can_generate_from_prefix`) run on the
whole prompt. Greedy generation stops at the end-of-sequence token.

Example:
    >>> runs = {"baseline": [], "gate": gate_knockout(batch)}  # doctest: +SKIP
    >>> texts = generate_runs(model, batch, runs, max_new_tokens=20)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens import hooks as hook_names
from vlm_lens.batch import Batch
from vlm_lens.engine.intervention import Intervention
from vlm_lens.engine.prefix import PrefixCache, reusable_from
from vlm_lens.types import HookList

__all__ = ["decode_answers", "generate_runs", "last_residuals", "shared_prefix_end"]


def shared_prefix_end(batch: Batch, runs: Mapping[str, HookList]) -> tuple[int, list[str]]:
    """The prefix length the runs can share and the runs that can share it.

    A run can use the clean prefix ``0 .. upto-1`` when its hooks are an `Intervention`
    whose ``earliest`` lies at or after every image position (`reusable_from`). ``upto`` is
    the smallest such ``earliest``, at most ``pos - 1`` (one position is left to compute).

    Returns:
        ``(upto, names)``; ``names`` is empty when no run can share a prefix.

    Example:
        >>> shared_prefix_end(batch, {"baseline": [], "gate": gate_knockout(batch)})
        ... # doctest: +SKIP
        (258, ['gate'])
    """
    length = int(batch.input_ids.shape[1])
    start = reusable_from(batch)
    names = [
        name
        for name, hooks in runs.items()
        if isinstance(hooks, Intervention) and hooks.earliest >= start
    ]
    if not names or start >= length:
        return length, []
    upto = min(length - 1, *(runs[n].earliest for n in names))  # type: ignore[attr-defined]
    return upto, names


def _prefix(model: Any, batch: Batch, runs: Mapping[str, HookList], reuse: bool, *, gen: bool):
    if not reuse or (gen and not model.can_generate_from_prefix(batch)):
        return None, set()
    upto, names = shared_prefix_end(batch, runs)
    if len(names) < 2:  # a prefix of one run's own saves nothing
        return None, set()
    return model.prefix_cache(batch, upto=upto), set(names)


def generate_runs(
    model: Any,
    batch: Batch,
    runs: Mapping[str, HookList],
    *,
    max_new_tokens: int,
    reuse_prefix: bool = True,
) -> dict[str, Tensor]:
    """Greedy new tokens of `batch` under each run's hooks.

    Args:
        model: the `HookedVLM`.
        batch: left-padded (or unpadded) prompts.
        runs: run name -> ``fwd_hooks``.
        max_new_tokens: most new tokens (generation stops earlier when every sequence has
            produced its end-of-sequence token).
        reuse_prefix: share the clean prefix between the runs that allow it (``False``:
            every run generates from the whole prompt; same tokens).

    Returns:
        Run name -> ``[batch, new]`` token ids.
    """
    prefix, sharing = _prefix(model, batch, runs, reuse_prefix, gen=True)
    start = int(batch.input_ids.shape[1])
    out: dict[str, Tensor] = {}
    for name, hooks in runs.items():
        shared: PrefixCache | None = prefix if name in sharing else None
        tokens = model.generate(
            batch, max_new_tokens=max_new_tokens, fwd_hooks=hooks, prefix=shared
        )
        out[name] = tokens[:, start:].cpu()
    return out


def last_residuals(
    model: Any, batch: Batch, runs: Mapping[str, HookList], *, reuse_prefix: bool = True
) -> dict[str, Float[Tensor, "batch d_model"]]:
    """The last real token's final-layer residual (``resid_post`` of the last block) of each
    sequence under each run's hooks (the representation χ^out is computed on).

    Args:
        model: the `HookedVLM`.
        batch: the prompts.
        runs: run name -> ``fwd_hooks``.
        reuse_prefix: run the sharing runs on one clean prefix (`shared_prefix_end`).

    Returns:
        Run name -> ``[batch, d_model]`` (float32, on the CPU).
    """
    prefix, sharing = _prefix(model, batch, runs, reuse_prefix, gen=False)
    name_out = hook_names.resid_post(int(model.cfg.n_layers) - 1)
    last = torch.tensor([int(p[-1]) for p in batch.layout.positions("last")])
    rows = torch.arange(len(batch))
    out: dict[str, Tensor] = {}
    for run, hooks in runs.items():
        kept: dict[str, Tensor] = {}

        def keep(tensor: Tensor, hook: Any, kept: dict[str, Tensor] = kept) -> None:  # noqa: ARG001
            kept["resid"] = tensor.detach()

        capture = [*hooks, (name_out, keep)]
        with torch.no_grad():
            if prefix is not None and run in sharing:
                model.run_suffix(prefix, fwd_hooks=capture)
                offset = prefix.upto
            else:
                model.run_with_hooks(batch, fwd_hooks=capture, return_type=None)
                offset = 0
        out[run] = kept["resid"][rows, last - offset].float().cpu()
    return out


def decode_answers(tokenizer: Any, tokens: Tensor) -> list[str]:
    """Each row of new tokens as text: cut at the first end-of-sequence token, special tokens
    dropped, whitespace stripped.

    Example:
        >>> decode_answers(model.tokenizer, new_tokens)  # doctest: +SKIP
        ['red', 'blue']
    """
    eos = tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    texts = []
    for row in tokens.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos_ids), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return texts

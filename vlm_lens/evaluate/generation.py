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

With ``stack_runs`` (the default) the runs go into as few calls as possible, stacked along
the batch (`vlm_lens.evaluate.stacking`, `vlm_lens.engine.row_stack`): the sharing runs
generate together from one tiled copy of the clean prefix, the whole-prompt runs (every random
draw) together from the tiled prompt, so a batch under the four Table 1 conditions costs one
prefix pass, one suffix pass, one whole-prompt pass of the draws and two decoding loops instead
of one decoding loop per run. ``stack_runs=False`` is the plain reference (one call per run).

Example:
    >>> runs = {"baseline": [], "gate": gate_knockout(batch)}  # doctest: +SKIP
    >>> texts = generate_runs(model, batch, runs, max_new_tokens=20)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens import hooks as hook_names
from vlm_lens.batch import Batch
from vlm_lens.engine.intervention import Intervention
from vlm_lens.engine.prefix import PrefixCache, reusable_from
from vlm_lens.engine.row_stack import rows_per_call, stack_hooks, stackable, tile_batch, tile_prefix
from vlm_lens.errors import VLMInputError
from vlm_lens.evaluate.stacking import Call, eos_ids, plan_calls, trim_finished
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
    stack_runs: bool = True,
    max_rows: int | Literal["auto"] = "auto",
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
        stack_runs: generate several runs in one call, stacked along the batch
            (`vlm_lens.evaluate.stacking`; ``False``: one call per run; same tokens).
        max_rows: the most rows of one stacked call (``"auto"``: from free memory,
            `rows_per_call`); a call holds at least one run.

    Returns:
        Run name -> ``[batch, new]`` token ids (each run's as long as its own generation).

    Example:
        >>> tokens = generate_runs(model, batch, {"baseline": [], "gate": ko}, max_new_tokens=20)
        ... # doctest: +SKIP
    """
    prefix, sharing = _prefix(model, batch, runs, reuse_prefix, gen=True)
    start = int(batch.input_ids.shape[1])
    out: dict[str, Tensor] = {}
    eos = eos_ids(model)
    for call in _calls(model, batch, runs, sharing, stack_runs, max_rows, max_new_tokens):
        stacked, hooks = _stacked(batch, runs, call.runs)
        shared: PrefixCache | None = None
        if call.shared and prefix is not None:
            shared = prefix if stacked is batch else tile_prefix(prefix, stacked, len(call.runs))
        tokens = model.generate(
            stacked, max_new_tokens=max_new_tokens, fwd_hooks=hooks, prefix=shared
        )
        for name, rows in zip(call.runs, tokens[:, start:].split(len(batch)), strict=True):
            out[name] = trim_finished(rows, eos).cpu()
    return {name: out[name] for name in runs}


def last_residuals(
    model: Any,
    batch: Batch,
    runs: Mapping[str, HookList],
    *,
    reuse_prefix: bool = True,
    stack_runs: bool = True,
    max_rows: int | Literal["auto"] = "auto",
) -> dict[str, Float[Tensor, "batch d_model"]]:
    """The last real token's final-layer residual (``resid_post`` of the last block) of each
    sequence under each run's hooks (the representation χ^out is computed on).

    Args:
        model: the `HookedVLM`.
        batch: the prompts.
        runs: run name -> ``fwd_hooks``.
        reuse_prefix: run the sharing runs on one clean prefix (`shared_prefix_end`).
        stack_runs: run several runs in one pass, stacked along the batch (equal up to float
            rounding, see `vlm_lens.engine.row_stack`).
        max_rows: the most rows of one stacked pass (``"auto"``: `rows_per_call`).

    Returns:
        Run name -> ``[batch, d_model]`` (float32, on the CPU).
    """
    prefix, sharing = _prefix(model, batch, runs, reuse_prefix, gen=False)
    name_out = hook_names.resid_post(int(model.cfg.n_layers) - 1)
    last = torch.tensor([int(p[-1]) for p in batch.layout.positions("last")])
    out: dict[str, Tensor] = {}
    for call in _calls(model, batch, runs, sharing, stack_runs, max_rows, 0):
        stacked, hooks = _stacked(batch, runs, call.runs)
        kept: dict[str, Tensor] = {}

        def keep(tensor: Tensor, hook: Any, kept: dict[str, Tensor] = kept) -> None:  # noqa: ARG001
            kept["resid"] = tensor.detach()

        capture = [*hooks, (name_out, keep)]
        with torch.no_grad():
            if prefix is not None and call.shared:
                copies = len(call.runs)
                shared = prefix if stacked is batch else tile_prefix(prefix, stacked, copies)
                model.run_suffix(shared, fwd_hooks=capture)
                offset = prefix.upto
            else:
                model.run_with_hooks(stacked, fwd_hooks=capture, return_type=None)
                offset = 0
        rows = torch.arange(len(stacked))
        resid = kept["resid"][rows, last.repeat(len(call.runs)) - offset].float().cpu()
        out.update(zip(call.runs, resid.split(len(batch)), strict=True))
    return {name: out[name] for name in runs}


def _calls(
    model: Any,
    batch: Batch,
    runs: Mapping[str, HookList],
    sharing: set[str],
    stack: bool,
    max_rows: int | Literal["auto"],
    new_tokens: int,
) -> list[Call]:
    """The calls of `runs` (`plan_calls`): one per run unless `stack`."""
    names = list(runs)
    if not stack:
        return [Call((name,), name in sharing) for name in names]
    rows = len(batch)
    if max_rows == "auto":
        length = int(batch.input_ids.shape[1])
        upto, _ = shared_prefix_end(batch, runs)
        suffix = length - upto if sharing else length
        shared_rows = rows_per_call(model, length, new_tokens=new_tokens, queries=suffix)
        full_rows = rows_per_call(model, length, new_tokens=new_tokens)
    elif int(max_rows) < 1:
        raise VLMInputError(f"max_rows must be at least 1 (or 'auto'), got {max_rows!r}")
    else:
        shared_rows = full_rows = int(max_rows)
    hook_points = list(model.hook_dict)
    alone = {name for name in names if not stackable(runs[name], hook_points)}
    return plan_calls(
        names,
        sharing,
        alone,
        width=max(1, shared_rows // rows),
        full_width=max(1, full_rows // rows),
    )


def _stacked(
    batch: Batch, runs: Mapping[str, HookList], names: tuple[str, ...]
) -> tuple[Batch, HookList]:
    """The batch and hooks of one call: the runs' own when it holds one run, else the batch
    tiled and the hooks stacked (`vlm_lens.engine.row_stack`)."""
    if len(names) == 1:
        return batch, runs[names[0]]
    return tile_batch(batch, len(names)), stack_hooks([runs[n] for n in names], len(batch))


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

"""`evaluate`: one task on one model under every condition (the paper's Table 1).

For each batch of items (prompts of one token length per batch, so that no batch needs
padding and generation can share the clean prefix), every condition's hooks are built on the
batch (`conditions`), the clean prefix they share is computed once (`generation`), and each
run generates greedily (VQA 20 new tokens, captions 60, stopping at end-of-sequence, on the KV
cache) or, for χ^out, records the last token's final-layer residual, several runs per call,
stacked along the batch (``stack_runs``). Each (item, run) row is
appended to ``out/predictions.jsonl`` as soon as it exists (`PredictionLog`); a restarted run
with the same config skips the rows done and ends with the same table, and a different config
is refused.
A batch is always formed the same way, so its numbers do not depend on where a run stopped.

Under ``torchrun`` or ``accelerate launch`` (detected from the environment,
`vlm_lens.data.distributed`), batch ``b`` goes to rank ``b % world_size``: each rank generates
its own batches and appends their rows to its own ``out/predictions.rank{r}.jsonl`` (the same
header as one process's log), then the ranks exchange their rows (``all_gather_object``) and
every rank scores all of them, so every rank returns the table of one process, exactly. A
restarted run reads every log in `out` (each rank's, or one process's) and skips the rows
done, with any number of processes. With ``out=None`` the rows are exchanged in memory only.

Example:
    >>> from vlm_lens.evaluate import TASKS, evaluate
    >>> items = TASKS["vqav2"].read("data/vqav2", limit=100)  # doctest: +SKIP
    >>> result = evaluate(model, "vqav2", items, model_name="organism:native")  # doctest: +SKIP
    >>> result.to_frame()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from vlm_lens.analysis.provenance import model_meta
from vlm_lens.batch import Batch
from vlm_lens.data import distributed
from vlm_lens.data.examples import Example, digest_of_digests, example_digests, load_image
from vlm_lens.data.identity import model_identity
from vlm_lens.data.store import fingerprint
from vlm_lens.errors import VLMInputError
from vlm_lens.evaluate.conditions import (
    DEFAULT_CONDITIONS,
    KNOCKOUT_MODE,
    Condition,
    ConditionContext,
    as_conditions,
    item_seed,
)
from vlm_lens.evaluate.generation import decode_answers, generate_runs, last_residuals
from vlm_lens.evaluate.items import EvalItem
from vlm_lens.evaluate.predictions import PredictionLog, log_name, log_paths, read_rows
from vlm_lens.evaluate.prompts import item_prompt
from vlm_lens.evaluate.result import EvaluationResult
from vlm_lens.evaluate.tasks import CHI_K, TASKS, Task
from vlm_lens.interventions.knockout import KnockoutMode
from vlm_lens.metrics.neighbourhood import Average
from vlm_lens.types import HookList
from vlm_lens.zoo.registry import ORGANISMS, PREFIX, WEIGHTS

__all__ = ["evaluate", "model_name_of"]

ConditionsArg = str | Iterable[str | Condition] | Mapping[str, Callable[[Batch], HookList]]


def model_name_of(model: Any) -> str:
    """A name for `model`: ``organism:NAME`` for a built-in organism's folder, else the
    Hugging Face ``name_or_path`` (or the family)."""
    path = str(getattr(model.hf_model, "name_or_path", "") or "")
    for name in ORGANISMS:
        if path and Path(path).resolve() == (WEIGHTS / name).resolve():
            return PREFIX + name
    return path or str(model.family)


def evaluate(
    model: Any,
    task: Task | str,
    items: Sequence[EvalItem],
    conditions: ConditionsArg = DEFAULT_CONDITIONS,
    *,
    model_name: str | None = None,
    batch_size: int = 16,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    seed: int = 42,
    k: int = CHI_K,
    chi_average: Average = "class",
    reuse_prefix: bool = True,
    stack_runs: bool = True,
    max_rows: int | Literal["auto"] = "auto",
    knockout_mode: KnockoutMode = KNOCKOUT_MODE,
    on_row: Callable[[Mapping[str, Any]], None] | None = None,
    shard: bool = True,
) -> EvaluationResult:
    """Run `task` on `items` under every condition and score it.

    Args:
        model: a `HookedVLM`.
        task: a `Task` or its name (`TASKS`).
        items: the items (`Task.read`).
        conditions: names (``"baseline,gate,image->text,random"``, ``"gate@last8"``), a list
            of names or `Condition` objects, or ``{name: batch -> fwd_hooks}``.
        model_name: the name recorded in the table and used for the model's own prompts
            (default: `model_name_of`).
        batch_size: prompts per batch.
        out: folder for ``predictions.jsonl`` (resumable); ``None`` keeps rows in memory.
        progress: show a progress bar.
        seed: seed of the random draws (`item_seed`).
        k: neighbours of χ^out.
        chi_average: χ^out's average: ``"class"`` (the mean of the class means, the paper's
            dadapy call) or ``"sample"`` (the plain mean); see `vlm_lens.evaluate.chi.chi_out`.
        reuse_prefix: share the clean prefix between conditions (same results; ``False`` runs
            every condition on the whole prompt).
        stack_runs: run a batch's conditions and draws in as few calls as possible, stacked
            along the batch (same predictions; ``False``: one call per run, the plain
            reference; see `vlm_lens.evaluate.generation`).
        max_rows: the most rows (prompts x runs) of one stacked call (``"auto"``: from the
            free memory, `vlm_lens.engine.row_stack.rows_per_call`).
        knockout_mode: how the named knockouts block an edge: ``"zero"`` (default, the
            paper's: post-softmax weights set to 0, not renormalised) or ``"mask"``
            (pre-softmax, renormalised; SDPA layers stay fused).
        on_row: called with each new row after it is written (in a multi-process run, on
            the rank that computed it).
        shard: under ``torchrun``/``accelerate launch``, share the batches with the other
            processes, which must all call `evaluate` with the same arguments; every rank
            returns the same result. ``False`` runs every batch in this process, as without a
            launcher (for a call made on one rank only).

    Returns:
        An `EvaluationResult`.

    Raises:
        VLMInputError: for an unknown task or condition, no items, repeated ids, an item the
            task cannot use, or an image that does not open.
        StoreConfigError: if `out` holds the predictions of another run.
        RuntimeError: in a multi-process run, when another rank failed (naming it).
    """
    task = _task(task)
    conds = as_conditions(conditions, knockout_mode)
    items = list(items)
    if not items:
        raise VLMInputError(f"no items to evaluate for {task.name}; check the data folder")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise VLMInputError(f"item ids repeat in the {task.name} data; every id must be unique")
    if batch_size < 1:
        raise VLMInputError(f"batch_size must be at least 1, got {batch_size}")
    name = model_name or model_name_of(model)
    ranks = distributed.current() if shard else distributed.Ranks()
    prompts = [item_prompt(model, name, task, item) for item in items]
    metric = task.metric
    runs = [(c, d, run) for c in conds for d, run in enumerate(c.run_names(task))]
    config = {
        "task": task.name,
        "metric": metric,
        "model": name,
        "conditions": {c.name: c.draws_for(task) for c in conds},
        "knockout_mode": knockout_mode,
        "seed": seed,
        "max_new_tokens": task.max_new_tokens,
        "batch_size": batch_size,
        "n": len(items),
        "items": _digest(ids, prompts),
    }
    if out is not None:  # what the name does not pin down: the weights, hooks, image bytes
        config["model_identity"] = _identity(model)
        config["images"] = _images_digest(items, prompts)
    batches = _batches(model, prompts, batch_size)
    mine = [chunk for b, chunk in enumerate(batches) if ranks.owns(b)]
    rank_log = log_name(ranks.rank, ranks.world_size)
    if ranks.active:  # every rank must be running the same evaluation
        ranks.together(lambda: _same_run(ranks, config), "checking the ranks agree")
    log = ranks.together(lambda: _log(out, rank_log, config), "opening the predictions log")
    try:
        # every log of the folder (each rank's, one process's), read after all were opened
        prior = ranks.together(lambda: _prior_rows(out, rank_log, config, log), "reading logs")
        known: dict[tuple[str, str], dict[str, Any]] = {}
        for row in prior:
            known.setdefault((str(row["id"]), str(row["run"])), row)
        rows: list[dict[str, Any]] = list(known.values())
        done = set(known)
        context = ConditionContext(int(model.cfg.n_layers))

        def run_mine() -> None:
            total = sum(len(chunk) for chunk in mine) * len(runs)
            bar = tqdm(
                total=total,
                desc=f"{task.name} {name}"
                + (f" (rank 0 of {ranks.world_size})" if ranks.active else ""),
                disable=not progress or ranks.rank != 0,
            )
            bar.update(sum(1 for c in mine for i in c for _, _, r in runs if (ids[i], r) in done))
            try:
                for chunk in mine:
                    todo = [
                        (c, d, r) for c, d, r in runs if any((ids[i], r) not in done for i in chunk)
                    ]
                    if not todo:
                        continue
                    batch = _prepare(model, [items[i] for i in chunk], [prompts[i] for i in chunk])
                    hooks: dict[str, HookList] = {}
                    for cond, draw, run in todo:
                        seeds = tuple(item_seed(seed, draw, ids[i]) for i in chunk)
                        ctx = ConditionContext(context.n_layers, draw, seeds)
                        hooks[run] = cond.build(batch, ctx)
                    values = _run(model, task, batch, hooks, reuse_prefix, stack_runs, max_rows)
                    for cond, draw, run in todo:
                        for slot, i in enumerate(chunk):
                            if (ids[i], run) in done:
                                continue
                            row = {"id": ids[i], "run": run, "condition": cond.name, "draw": draw}
                            row.update(values[run][slot])
                            if log is not None:
                                log.write(row)
                            rows.append(row)
                            known[(ids[i], run)] = row
                            done.add((ids[i], run))
                            bar.update(1)
                            if on_row is not None:
                                on_row(row)
            finally:
                bar.close()

        ranks.together(run_mine, "evaluating the batches")
    finally:
        if log is not None:
            log.close()
    if ranks.active:  # every rank's rows of its own batches, in the order of one process
        shares = ranks.gather([known[(ids[i], r)] for c in mine for _, _, r in runs for i in c])
        merged = {(str(r["id"]), str(r["run"])): r for share in shares for r in share}
        rows = [merged[(ids[i], r)] for chunk in batches for _, _, r in runs for i in chunk]
    settings = {**config, "k": k, "chi_average": chi_average}
    meta = {"analysis": "evaluate", "model": _model_meta(model), "settings": settings}
    return dataclasses.replace(_score(task, name, items, conds, rows, k, chi_average), meta=meta)


def _model_meta(model: Any) -> dict[str, Any]:
    try:
        return model_meta(model)
    except AttributeError:  # a stand-in without the HookedVLM attributes
        return {"name_or_path": model_name_of(model)}


def _task(task: Task | str) -> Task:
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise VLMInputError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return TASKS[task]


def _digest(ids: Sequence[str], prompts: Sequence[str]) -> str:
    text = json.dumps(list(zip(ids, prompts, strict=True)))
    return hashlib.sha256(text.encode()).hexdigest()


def _identity(model: Any) -> dict[str, Any]:
    """`model_identity` with the per-parameter digests folded into one (the log's header stays
    small; a change still shows as ``model_identity``)."""
    identity = model_identity(model)
    identity["weights"] = fingerprint(identity["weights"])
    return identity


def _images_digest(items: Sequence[EvalItem], prompts: Sequence[str]) -> str:
    """One digest of every item's image contents (files by their bytes, not their names)."""
    examples = [
        Example(item.image, prompt, id=item.id) for item, prompt in zip(items, prompts, strict=True)
    ]
    return digest_of_digests(example_digests(examples, prompts))


def _log(
    out: str | os.PathLike[str] | None, name: str, config: Mapping[str, Any]
) -> PredictionLog | None:
    if out is None:
        return None
    return PredictionLog.open(Path(out) / name, config)


def _prior_rows(
    out: str | os.PathLike[str] | None,
    name: str,
    config: Mapping[str, Any],
    log: PredictionLog | None,
) -> list[dict[str, Any]]:
    """This rank's logged rows, then those of the folder's other logs (other ranks', or one
    process's), so that a run resumes whatever the number of processes that started it."""
    if out is None or log is None:
        return []
    rows = list(log.rows)
    for path in log_paths(out):
        if path.name != name:
            rows.extend(read_rows(path, config))
    return rows


def _same_run(ranks: distributed.Ranks, config: Mapping[str, Any]) -> None:
    """Raise unless every rank has the config of rank 0 (same items, model, conditions...)."""
    digests = ranks.gather(fingerprint(json.loads(json.dumps(config, default=str))))
    others = [r for r, d in enumerate(digests) if d != digests[0]]
    if others:
        raise VLMInputError(
            f"ranks {others} evaluate another run than rank 0 (other items, model, conditions "
            "or settings); every rank of a torchrun/accelerate launch must call evaluate with "
            "the same arguments and data"
        )


def _batches(model: Any, prompts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Item indices in batches of prompts of one token length each (no padding, so the
    clean prefix can be shared during generation), at most `batch_size` per batch, in order
    of length, then of the items."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        lengths = [0] * len(prompts)
    else:
        lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    groups: dict[int, list[int]] = {}
    for i in sorted(range(len(prompts)), key=lambda i: lengths[i]):
        groups.setdefault(lengths[i], []).append(i)
    return [
        group[start : start + batch_size]
        for group in groups.values()
        for start in range(0, len(group), batch_size)
    ]


def _prepare(model: Any, items: Sequence[EvalItem], prompts: Sequence[str]) -> Batch:
    images = []
    for item in items:
        try:
            images.append(load_image(item.image))
        except OSError as error:
            raise VLMInputError(
                f"the image of item {item.id!r} ({item.image}) does not open: {error}; fix or "
                "remove the file"
            ) from None
    return model.prepare(images=images, text=list(prompts), padding_side="left")


def _run(
    model: Any,
    task: Task,
    batch: Batch,
    hooks: Mapping[str, HookList],
    reuse: bool,
    stack: bool,
    max_rows: int | Literal["auto"],
) -> dict[str, list[dict[str, Any]]]:
    options: dict[str, Any] = {"reuse_prefix": reuse, "stack_runs": stack, "max_rows": max_rows}
    if task.metric == "chi_out":
        reps = last_residuals(model, batch, hooks, **options)
        return {r: [{"representation": v.tolist()} for v in t] for r, t in reps.items()}
    tokens = generate_runs(model, batch, hooks, max_new_tokens=task.max_new_tokens, **options)
    return {
        r: [{"prediction": p} for p in decode_answers(model.tokenizer, t)]
        for r, t in tokens.items()
    }


def _score(
    task: Task,
    name: str,
    items: Sequence[EvalItem],
    conds: Sequence[Condition],
    rows: Sequence[Mapping[str, Any]],
    k: int,
    chi_average: Average = "class",
) -> EvaluationResult:
    by_run: dict[str, dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(str(row["run"]), {})[str(row["id"])] = row
    scores: dict[str, float] = {}
    draws: dict[str, list[float]] = {}
    for cond in conds:
        values = [
            _score_run(task, items, by_run.get(run, {}), k, chi_average)
            for run in cond.run_names(task)
        ]
        scores[cond.name] = float(np.mean(values))
        if len(values) > 1:
            draws[cond.name] = values
    frame = pd.DataFrame(
        [
            {
                "id": r["id"],
                "condition": r["condition"],
                "draw": r["draw"],
                "prediction": r.get("prediction"),
            }
            for r in rows
        ]
    )
    return EvaluationResult(
        task.name,
        name,
        task.metric,
        len(items),
        scores,
        draws,
        {c.name: c.description for c in conds},
        frame,
    )


def _score_run(
    task: Task,
    items: Sequence[EvalItem],
    rows: Mapping[str, Mapping[str, Any]],
    k: int,
    chi_average: Average = "class",
) -> float:
    missing = [item.id for item in items if item.id not in rows]
    if missing:
        raise VLMInputError(f"no prediction for item {missing[0]!r}")  # pragma: no cover
    if task.metric == "chi_out":
        reps = torch.tensor([rows[item.id]["representation"] for item in items])
        return float(task.score_representations(reps, items, k=k, average=chi_average))
    predictions = {item.id: str(rows[item.id]["prediction"]) for item in items}
    return float(task.score(predictions, items))

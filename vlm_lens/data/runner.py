"""`run_dataset`: collect probes over a dataset into an `ActivationStore`, resumably.

The examples are cut into fixed chunks of `batch_size` (chunk ``c`` = examples
``c*batch_size .. (c+1)*batch_size - 1``, one forward pass each). Each chunk is prepared,
collected (`vlm_lens.data.collect`, reduced inside the hooks) and written to its own file before
the next one starts; nothing accumulates across chunks, so memory stays bounded by one chunk
whatever the dataset size (paths in `Example.images` are opened per chunk). A rerun with the
same arguments skips the chunks already on disk, so a run killed halfway and restarted ends with
the same store as an uninterrupted one; a rerun with other arguments raises
`vlm_lens.data.store.StoreConfigError` instead of mixing two runs.

What counts as "the same run" is everything that changes the stored numbers: the model's
identity (`vlm_lens.data.identity.model_identity`: every weight's bytes, the hooks active on
the model, the attention implementation, dtype, device type, torch and transformers versions),
the probes (callable position specs by content), the seed, padding side, logit tokens, batch
size, and every example's prompt, label, id, metadata and image contents (image files by their
bytes). Before resuming, every chunk on disk is checked (`ActivationStore.damaged_chunks`);
damaged ones are deleted with a warning and recomputed.

Data parallel: launched by ``torchrun`` or ``accelerate launch`` (``RANK``/``WORLD_SIZE`` in the
environment), the chunks are shared round robin over the processes, each writing its own chunk
files into the one store; the store equals a one-process run's (`vlm_lens.data.distributed`).

Example:
    >>> import tempfile
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.data.collect import Probe
    >>> from vlm_lens.data.examples import make_examples
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("llava")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> examples = make_examples([sample_image(i, tiny.image_size) for i in range(5)],
    ...                          "a photo", labels=[0, 1, 0, 1, 1])
    >>> store = run_dataset(model, examples, [Probe("gate")], tempfile.mkdtemp(),
    ...                     batch_size=2, prompt="USER: {image}\\n{text} ASSISTANT:",
    ...                     progress=False)
    >>> store.complete, store.load("gate").shape, store.labels
    (True, torch.Size([5, 2, 32]), [0, 1, 0, 1, 1])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, cast

from tqdm.auto import tqdm

from vlm_lens.data import distributed
from vlm_lens.data.collect import Probe, check_probes, collect
from vlm_lens.data.examples import (
    Example,
    PromptSpec,
    build_prompt,
    digest_of_digests,
    example_digests,
)
from vlm_lens.data.identity import model_identity
from vlm_lens.data.store import ActivationStore
from vlm_lens.engine.memory import auto_batch_size
from vlm_lens.errors import StoreConfigError, VLMInputError


def run_dataset(
    model: Any,
    examples: Sequence[Example],
    probes: Sequence[Probe],
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int | str = 8,
    seed: int = 0,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    padding_side: str = "left",
    prompt: PromptSpec = None,
    logit_tokens: Sequence[int] | None = None,
    on_chunk_written: Callable[[int, ActivationStore], None] | None = None,
    shard: bool = True,
) -> ActivationStore:
    """Collect `probes` on every example into a store at `out_dir`.

    Args:
        model: a `vlm_lens.HookedVLM`.
        examples: the dataset (a list, or any sequence with ``len`` and indexing).
        probes: what to collect (see `Probe`).
        out_dir: the store folder.
        batch_size: examples per forward pass and per chunk file, or ``"auto"``: as many as
            should fit in half the free memory of the model's device
            (`vlm_lens.engine.memory.auto_batch_size`, sized on the first example's prompt
            length), or the chunk size of the store being resumed. Part of the run config:
            resuming needs the same value.
        seed: seed of the ``"random"`` probes (draws depend on the seed and the example index
            only, not on the batching).
        resume: continue a store of the same run, skipping its finished chunks (each is
            checked first; damaged ones are recomputed, with a warning). With ``False`` a
            store that already has chunks is an error (unless `overwrite`).
        overwrite: delete whatever store is at `out_dir` and start over.
        progress: show a tqdm progress bar over examples.
        padding_side: ``"left"`` (default) or ``"right"``.
        prompt: how to build each prompt (see `vlm_lens.data.examples.build_prompt`).
        logit_tokens: also store the last-token logits of these token ids (``"logits"``).
        on_chunk_written: called as ``f(chunk, store)`` after each chunk is on disk (in a
            multi-process run, on the rank that wrote it).
        shard: under ``torchrun``/``accelerate launch``, share the chunks with the other
            processes, which must all call `run_dataset` with the same arguments. ``False``
            runs every chunk in this process, as without a launcher (for a call made on one
            rank only, which would otherwise wait for the others forever).

    Returns:
        The complete `ActivationStore`.

    Raises:
        VLMInputError: before any forward pass, for an example whose prompt does not have one
            image placeholder per image (naming the example); during the run, for a chunk the
            model rejects (naming its examples).
        StoreConfigError: if `out_dir` holds a different run and `overwrite` is false (naming
            what differs: ``model.weights.<name>``, ``model.hooks``, ``examples`` with the
            examples whose inputs changed...).
        HookFingerprintError: for a hook active on the model whose state cannot be read by
            content (see `vlm_lens.data.hook_state`).
        ValueError: for bad probes (unknown site or role, hook missing in the model).

    Example:
        >>> store = run_dataset(model, examples, [Probe("gate")], "runs/gate")  # doctest: +SKIP
        >>> gate = store.load("gate")  # [examples, layers, d_model]  # doctest: +SKIP
    """
    if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be an int >= 1 or 'auto', got {batch_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if len(examples) == 0:
        raise ValueError("examples is empty")
    probes = list(probes)
    ranks = distributed.current() if shard else distributed.Ranks()

    def prepare() -> tuple[dict[str, Any], list[str], list[str], int]:
        check_probes(model, probes)
        placeholder = model.image_placeholder
        prompts = [build_prompt(ex, placeholder, prompt) for ex in examples]
        for i, (example, text) in enumerate(zip(examples, prompts, strict=True)):
            _check_placeholders(i, example, text, placeholder)
        digests = example_digests(examples, prompts)
        config = {
            "model": model_identity(model),
            "probes": [p.describe(model.cfg.n_layers, model) for p in probes],
            "logit_tokens": None if logit_tokens is None else [int(t) for t in logit_tokens],
            "seed": seed,
            "padding_side": padding_side,
            "prompt": _describe_prompt(prompt),
            "examples": digest_of_digests(digests),
        }
        size = (
            batch_size
            if isinstance(batch_size, int)
            else _auto_batch_size(model, examples, prompts, out_dir, resume and not overwrite)
        )
        return config, prompts, digests, size

    config, prompts, digests, chunk_size = ranks.together(prepare, "preparing the run")
    chunk_size = ranks.gather(chunk_size)[0]  # "auto": every rank uses rank 0's size
    records = [ex.record() for ex in examples]

    def open_store(first: bool) -> ActivationStore | None:
        """Rank 0 first (it creates, clears or rebuilds), then the others reopen."""
        if (ranks.rank == 0) != first:
            return None
        store = ActivationStore.create(
            out_dir,
            config=config,
            records=records,
            chunk_size=chunk_size,
            overwrite=overwrite and ranks.rank == 0,
            example_digests=digests,
            clean=ranks.rank == 0,  # another rank's temporary file may be in flight
        )
        done = store.completed_chunks
        if done and not resume:
            raise StoreConfigError(
                f"{out_dir} already has {len(done)} chunk(s) of this run; pass resume=True to "
                "continue it or overwrite=True to start over"
            )
        return store

    created = ranks.together(lambda: open_store(True), "creating the store")
    opened = ranks.together(lambda: open_store(False), "opening the store")
    store = cast(ActivationStore, opened or created)
    mine = [c for c in range(store.n_chunks) if ranks.owns(c)]
    done = set(mine) & set(store.completed_chunks)
    done -= set(store.remove_damaged(sorted(done)))

    def run_mine() -> None:
        bar = tqdm(
            total=sum(stop - start for start, stop in map(store.chunk_bounds, mine)),
            initial=sum(stop - start for start, stop in map(store.chunk_bounds, done)),
            disable=not progress or ranks.rank != 0,
            unit="ex",
            desc=f"vlm_lens {model.family}"
            + (f" (rank 0 of {ranks.world_size})" if ranks.active else ""),
        )
        try:
            for chunk in mine:
                if chunk in done:
                    continue
                start, stop = store.chunk_bounds(chunk)
                _run_chunk(
                    model, examples, prompts, probes, store, chunk, seed, padding_side, logit_tokens
                )
                bar.update(stop - start)
                if on_chunk_written is not None:
                    on_chunk_written(chunk, store)
        finally:
            bar.close()

    ranks.together(run_mine, "collecting the chunks")
    ranks.together(lambda: _check_all_written(store, ranks), "checking the store")
    return store


def _check_all_written(store: ActivationStore, ranks: distributed.Ranks) -> None:
    """On rank 0 of a multi-process run: every rank's chunks are on disk, of this run."""
    if not ranks.active or ranks.rank != 0:
        return
    missing = [c for c in range(store.n_chunks) if not store.has_chunk(c)]
    foreign = store.foreign_chunks()
    if missing or foreign:
        raise StoreConfigError(
            f"after every rank finished, {store.path} lacks chunks {missing} and has chunks of "
            f"another run {foreign}; the store folder must be one folder every rank sees (a "
            "shared filesystem across nodes). Rerun the same command to complete it"
        )


def _run_chunk(
    model: Any,
    examples: Sequence[Example],
    prompts: Sequence[str],
    probes: Sequence[Probe],
    store: ActivationStore,
    chunk: int,
    seed: int,
    padding_side: str,
    logit_tokens: Sequence[int] | None,
) -> None:
    """Prepare, collect and write one chunk; everything it builds is freed on return."""
    start, stop = store.chunk_bounds(chunk)
    images = [examples[i].load_images() for i in range(start, stop)]
    try:
        batch = model.prepare(
            images=images, text=list(prompts[start:stop]), padding_side=padding_side
        )
    except VLMInputError as exc:
        raise VLMInputError(f"examples {start}..{stop - 1} (chunk {chunk}): {exc}") from exc
    del images
    tensors = collect(
        model,
        batch,
        probes,
        seed=seed,
        example_indices=range(start, stop),
        logit_tokens=logit_tokens,
    )
    del batch
    store.write_chunk(chunk, tensors)


def _auto_batch_size(
    model: Any,
    examples: Sequence[Example],
    prompts: Sequence[str],
    out_dir: str | os.PathLike[str],
    resume: bool,
) -> int:
    """The chunk size of the store being resumed, else `auto_batch_size` for the longest of the
    first few prompts (padding makes a batch as long as its longest prompt)."""
    if resume:
        try:
            return ActivationStore(out_dir).chunk_size
        except (StoreConfigError, OSError, KeyError, ValueError):
            pass
    sample = range(min(4, len(examples)))
    lengths = [
        int(model.prepare(images=examples[i].load_images(), text=prompts[i]).input_ids.shape[1])
        for i in sample
    ]
    return auto_batch_size(model, max(lengths))


def _check_placeholders(index: int, example: Example, prompt: str, placeholder: str) -> None:
    found, n_images = prompt.count(placeholder), len(example.image_list)
    if found != n_images:
        shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        raise VLMInputError(
            f"example {index} (id={example.id!r}): its prompt {shown!r} has {found} image "
            f"placeholder(s) {placeholder!r} for {n_images} image(s); write {placeholder!r} "
            "once per image in the text, or pass prompt='... {image} ...' to run_dataset"
        )


def _describe_prompt(prompt: PromptSpec) -> str | None:
    if prompt is None or isinstance(prompt, str):
        return prompt
    return f"callable:{getattr(prompt, '__qualname__', type(prompt).__name__)}"

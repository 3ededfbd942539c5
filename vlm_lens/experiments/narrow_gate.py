"""Run the narrow-gate analyses on one model: attention share, χ, modality gap, the knockout
conditions, the patching sweep, and one image's attention map and attention view.

Choices for a model and images without answers (documented in the README):

* **prompt**: the organisms get their colour question (``"<image>what colour is the shape?"``);
  any other model ``"<image>This is a picture of a"``; ``<image>`` becomes the model's
  placeholder.
* **χ** uses the labels (the world's colour, or the subfolder names); skipped without labels.
* **knockout**: next-token agreement and similarity with the baseline for every model; accuracy
  by greedy answers (`vlm_lens.zoo.tasks.answer_accuracy`) for an organism on the world with its
  question, else top-1 = the label's first token when labels exist.
* **patching** pairs images of different labels (class tokens: the labels' first tokens), or,
  without labels (or labels the tokenizer does not know), images whose baseline top-1 tokens
  differ (class tokens: those top-1s).

Example:
    >>> from vlm_lens import HookedVLM
    >>> model = HookedVLM.from_pretrained("organism:nonnative")
    >>> run = run_narrow_gate(model, world_images(8), name="organism:nonnative",
    ...                       settings=Settings(n_pairs=2, attention_view=False))
    >>> run.knockout.conditions, run.overlap is not None, run.patching.n_pairs
    (('baseline', 'gate', 'image->text', 'random'), True, 2)
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vlm_lens import hooks
from vlm_lens.analysis import (
    AttentionShareResult,
    KnockoutResult,
    ModalityGapResult,
    OverlapResult,
    PatchingSweepResult,
    PatchPair,
    attention_share,
    knockout_effect,
    modality_gap,
    neighbourhood_overlap,
    patching_sweep,
)
from vlm_lens.analysis.knockout_effect import DEFAULT_CONDITIONS
from vlm_lens.analysis.patching_sweep import PatchSite
from vlm_lens.analysis.persist import register_result
from vlm_lens.batch import Batch
from vlm_lens.data.collect import Probe, collect
from vlm_lens.data.distributed import map_shared, shared_ranks
from vlm_lens.errors import AnalysisSkipped, ReportInputError, VLMInputError, VLMLensError
from vlm_lens.experiments.images import ImageSet, world_images
from vlm_lens.metrics.neighbourhood import Average
from vlm_lens.model import HookedVLM
from vlm_lens.positions import after
from vlm_lens.viz.circuits import attention_heads_view
from vlm_lens.viz.image_attention import patch_grid
from vlm_lens.zoo.registry import model_defaults
from vlm_lens.zoo.tasks import answer_accuracy

__all__ = ["ModelRun", "Settings", "default_prompt", "run_narrow_gate", "world_images"]

PLACEHOLDER = "<image>"
"""Marks the image in a ``--prompt``; replaced by the model's own placeholder."""


@dataclass(frozen=True)
class Settings:
    """What to run and how much of it.

    Attributes:
        batch_size: prompts per forward pass.
        k: neighbours for χ (clamped to ``n - 1``).
        chi_average: how χ averages over images: ``"class"`` (the mean of the class means,
            the paper's dadapy call) or ``"sample"`` (the plain mean).
        n_pairs: most image pairs for the patching sweep.
        patch_site: ``"residual"`` or ``"attention"``.
        heatmap_layer: layer of the attention map and view (default: the middle layer).
        prompt: the prompt (``<image>`` marks the image), or ``None`` for the default.
        attention_view: also make the circuitsvis view of the first prompt.
        seed: seed of the random token draws (modality gap, random knockout).
    """

    batch_size: int = 32
    k: int = 7
    chi_average: Average = "class"
    n_pairs: int = 12
    patch_site: PatchSite = "residual"
    heatmap_layer: int | None = None
    prompt: str | None = None
    attention_view: bool = True
    seed: int = 0


@register_result
@dataclass
class ModelRun:
    """Every result of one model (``None`` where an analysis was skipped; see `skipped`)."""

    name: str
    family: str
    config: dict[str, Any]
    prompt: str
    n_images: int
    shares: AttentionShareResult
    knockout: KnockoutResult
    overlap: OverlapResult | None = None
    gap: ModalityGapResult | None = None
    patching: PatchingSweepResult | None = None
    heatmap: AttentionShareResult | None = None
    heatmap_layer: int = 0
    heatmap_image: Image.Image | None = None
    heatmap_grid: tuple[int, int] | None = None
    view_html: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def default_prompt(model: HookedVLM, name: str, prompt: str | None = None) -> str:
    """The prompt for `model`: `prompt` (or the default) with ``<image>`` as its placeholder.

    Example:
        >>> default_prompt(model, "organism:nonnative")  # doctest: +SKIP
        '<image>what colour is the shape?'
    """
    if prompt is None:
        prompt = model_defaults(name).prompt
    if PLACEHOLDER not in prompt:
        prompt = PLACEHOLDER + prompt
    return prompt.replace(PLACEHOLDER, model.image_placeholder)


def class_token(tokenizer: Any, label: str) -> int | None:
    """The first token of `label` as the model would write it after a space, or ``None``.

    Example:
        >>> class_token(model.tokenizer, "red")  # doctest: +SKIP
        12
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    for text in (" " + label, label):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if ids and ids[0] != unk:
            return int(ids[0])
    return None


def heatmap_layer(layer: int | None, n_layers: int) -> int:
    """The layer of the attention map: `layer` (negative counts from the end) or the middle one.

    Raises:
        ReportInputError: for a layer the model does not have.

    Example:
        >>> heatmap_layer(None, 32), heatmap_layer(-1, 32)
        (16, 31)
    """
    if layer is None:
        return n_layers // 2
    if not -n_layers <= layer < n_layers:
        raise ReportInputError(
            f"--heatmap-layer {layer} is outside the model's layers 0..{n_layers - 1}; pick one "
            "of them (negative counts from the end)"
        )
    return layer % n_layers


def run_narrow_gate(
    model: HookedVLM,
    images: ImageSet,
    *,
    name: str,
    settings: Settings | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> ModelRun:
    """Every narrow-gate analysis of `model` on `images`.

    Args:
        model: the `HookedVLM`.
        images: the images (and labels) to run on.
        name: the model's name in the report (``organism:...`` enables the organism defaults).
        settings: what to run (default `Settings()`).
        progress: show progress bars.
        log: called with a short line before each step.

    Returns:
        A `ModelRun`. An analysis that cannot run on these inputs (no labels for χ, no text
        after the gate for the modality gap...) is ``None`` with the reason in ``skipped``.
    """
    settings = settings or Settings()
    say = log or (lambda _line: None)
    prompt = default_prompt(model, name, settings.prompt)
    layer = heatmap_layer(settings.heatmap_layer, model.cfg.n_layers)
    batches = _batches(model, images.images, prompt, settings.batch_size)
    cfg = model.cfg
    config = {
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "n_heads": int(cfg.n_heads),
        "n_image_tokens": int(batches[0].layout.counts()["image"][0]),
        "dtype": str(model.dtype).replace("torch.", ""),
        "device": str(model.device),
    }
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}

    def timed(step: str, fn: Callable[[], Any]) -> Any:
        say(f"[{name}] {step}")
        start = time.perf_counter()
        try:
            return fn()
        except (AnalysisSkipped, VLMInputError) as error:  # any other error is a bug: raise
            skipped[step] = str(error).splitlines()[0]
            say(f"[{name}] {step} skipped: {skipped[step]}")
            return None
        finally:
            seconds[step] = round(time.perf_counter() - start, 2)

    shares = timed("attention share", lambda: attention_share(model, batches, progress=progress))
    if shares is None:
        raise VLMLensError(f"attention share failed on {name}: {skipped['attention share']}")
    reps = timed("representations", lambda: _representations(model, batches, settings))
    if reps is None:
        raise VLMLensError(f"representations failed on {name}: {skipped['representations']}")
    overlap = timed("neighbourhood overlap", lambda: _overlap(reps, images, settings))
    gap = timed("modality gap", lambda: _gap(reps))
    knock = timed(
        "knockout", lambda: _knockout(model, batches, images, name, prompt, settings, progress)
    )
    if knock is None:
        raise VLMLensError(f"knockout failed on {name}: {skipped['knockout']}")
    patching = timed(
        "patching",
        lambda: _patching(model, images, prompt, knock.top1[0], settings, progress),
    )
    one = model.prepare(images=images.images[0], text=prompt)
    heat = timed("heatmap", lambda: _heatmap(model, one, layer))
    view = None
    if settings.attention_view:
        view = timed("attention view", lambda: _view(model, one, layer))
    return ModelRun(
        name=name,
        family=model.family,
        config=config,
        prompt=prompt,
        n_images=len(images),
        shares=shares,
        knockout=knock,
        overlap=overlap,
        gap=gap,
        patching=patching,
        heatmap=heat[0] if heat else None,
        heatmap_layer=layer,
        heatmap_image=images.images[0],
        heatmap_grid=heat[1] if heat else None,
        view_html=view,
        skipped=skipped,
        seconds=seconds,
    )


# ------------------------------------------------------------------ steps
def _batches(model: HookedVLM, images: Sequence[Image.Image], prompt: str, size: int) -> list:
    return [
        model.prepare(
            images=list(images[i : i + size]),
            text=[prompt] * len(images[i : i + size]),
            padding_side="left",
        )
        for i in range(0, len(images), size)
    ]


REPRESENTATIONS: dict[str, tuple[Any, str]] = {
    "gate": ("gate", "each"),
    "image_mean": ("image", "mean"),
    "last": ("last", "each"),
    "image_random": ("image", "random"),
}
"""Probe name -> (positions, reduce): χ's three roles and the modality gap's image token."""


def _representations(
    model: HookedVLM, batches: list[Batch], settings: Settings
) -> dict[str, Tensor]:
    """``{probe: [layers, n, d]}`` in one pass per batch (``text_random`` when there is text
    after the gate)."""
    probes = [Probe(n, positions=p, reduce=r) for n, (p, r) in REPRESENTATIONS.items()]
    text = Probe("text_random", positions=after("text", "gate"), reduce="random")
    starts = np.cumsum([0, *(len(b) for b in batches)]).tolist()

    def step(index: int) -> dict[str, Tensor]:
        batch = batches[index]
        indices = list(range(starts[index], starts[index] + len(batch)))
        try:
            out = collect(
                model, batch, [*probes, text], seed=settings.seed, example_indices=indices
            )
        except VLMInputError:  # no text after the gate: no modality gap
            out = collect(model, batch, probes, seed=settings.seed, example_indices=indices)
        return {name: value.cpu() for name, value in out.items()}

    # inside `vlm_lens.data.distributed.sharded` the ranks of a launch share the batches
    parts: dict[str, list[Tensor]] = defaultdict(list)
    for out in map_shared(step, list(range(len(batches))), desc="representations"):
        for name in [*REPRESENTATIONS, text.name]:
            if name in out:
                parts[name].append(out[name])
    n = starts[-1]
    return {
        name: torch.cat(chunks).transpose(0, 1).contiguous()
        for name, chunks in parts.items()
        if sum(c.shape[0] for c in chunks) == n
    }


def _overlap(reps: dict[str, Tensor], images: ImageSet, settings: Settings) -> OverlapResult:
    if images.labels is None or images.n_classes < 2:
        raise AnalysisSkipped("χ needs labels of at least two classes (DIR/<label>/*.jpg)")
    k = max(1, min(settings.k, len(images) - 1))
    roles = {name: reps[name] for name in ("gate", "image_mean", "last")}
    return neighbourhood_overlap(roles, list(images.labels), k=k, average=settings.chi_average)


def _gap(reps: dict[str, Tensor]) -> ModalityGapResult:
    if "text_random" not in reps:
        raise AnalysisSkipped("the prompt has no text after the gate to compare with image tokens")
    text, image = reps["text_random"], reps["image_random"]
    size = max(4, min(16, text.shape[1] // 4))
    if text.shape[1] + image.shape[1] < size:
        raise AnalysisSkipped(
            f"the modality gap clusters groups of at least {size} points; "
            f"{text.shape[1]} image(s) give {text.shape[1] + image.shape[1]}"
        )
    return modality_gap(text, image, min_cluster_size=size, min_samples=size)


def _knockout(
    model: HookedVLM,
    batches: list[Batch],
    images: ImageSet,
    name: str,
    prompt: str,
    settings: Settings,
    progress: bool,
) -> KnockoutResult:
    question = model_defaults(name).world_question
    asked = None if question is None else default_prompt(model, name, PLACEHOLDER + question)
    by_answers = images.scenes is not None and prompt == asked
    targets = None
    if not by_answers and images.labels is not None and model.tokenizer is not None:
        ids = [class_token(model.tokenizer, label) for label in images.labels]
        if all(i is not None for i in ids):
            targets = [int(i) for i in ids if i is not None]
    result = knockout_effect(model, batches, targets=targets, progress=progress)
    if not by_answers:
        return result
    assert images.scenes is not None
    accuracy = {}
    conditions = {"baseline": None, **DEFAULT_CONDITIONS}
    for condition, build in conditions.items():
        answers = answer_accuracy(
            model,
            images.scenes,
            kinds=("colour",),
            batch_size=settings.batch_size,
            intervention=build,
            max_new_tokens=2,
        )
        accuracy[condition] = answers.accuracy["colour"]
    return result.with_accuracy(accuracy, "greedy answers to the colour question")


def _pairs_of(keys: Sequence[Any], limit: int) -> list[tuple[int, int]]:
    """Disjoint (source, target) index pairs whose keys differ, in order."""
    used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for i in range(len(keys)):
        if i in used or len(pairs) >= limit:
            continue
        for j in range(i + 1, len(keys)):
            if j not in used and keys[j] != keys[i]:
                pairs.append((i, j))
                used.update((i, j))
                break
    return pairs


def _patching(
    model: HookedVLM,
    images: ImageSet,
    prompt: str,
    top1: np.ndarray,
    settings: Settings,
    progress: bool,
) -> PatchingSweepResult:
    tokens: list[int | None] = [int(t) for t in top1]
    keys: Sequence[Any] = tokens
    if images.labels is not None and images.n_classes >= 2 and model.tokenizer is not None:
        named = [class_token(model.tokenizer, label) for label in images.labels]
        if all(t is not None for t in named):  # else: the labels are not words of the model
            tokens, keys = named, images.labels
    usable = [i for i, t in enumerate(tokens) if t is not None]
    pairs = [
        (usable[a], usable[b])
        for a, b in _pairs_of([keys[i] for i in usable], settings.n_pairs)
        if tokens[usable[a]] != tokens[usable[b]]
    ]
    if not pairs:
        raise AnalysisSkipped("no pair of images of different classes (or predictions) to patch")
    # one batch of pairs; under a launch (`vlm_lens.data.distributed.sharded`) one per rank
    ranks = shared_ranks().world_size
    size = -(-len(pairs) // min(ranks, len(pairs)))
    chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    batches = [
        PatchPair(
            model.prepare(images=[images.images[i] for i, _ in chunk], text=[prompt] * len(chunk)),
            model.prepare(images=[images.images[j] for _, j in chunk], text=[prompt] * len(chunk)),
            source_token=torch.tensor([tokens[i] for i, _ in chunk]),
            target_token=torch.tensor([tokens[j] for _, j in chunk]),
        )
        for chunk in chunks
    ]
    return patching_sweep(model, batches, site=settings.patch_site, progress=progress)


def _heatmap(
    model: HookedVLM, batch: Batch, layer: int
) -> tuple[AttentionShareResult, tuple[int, int]]:
    result = attention_share(model, batch, layers=[layer])
    if result.per_token is None:
        raise AnalysisSkipped("no per-token attention for this prompt")
    n = result.per_token.shape[1]
    span_grid = batch.layout.spans[0][0].grid if batch.layout.spans[0] else None
    if span_grid is not None and n > span_grid[0] * span_grid[1]:
        n = span_grid[0] * span_grid[1]  # the grid ends the span (LLaVA-Next: after the base)
        result = dataclasses.replace(result, per_token=result.per_token[:, -n:])
    try:
        return result, patch_grid(n, span_grid)
    except ValueError as error:  # tiles (InternVL), or a span without a known grid
        raise AnalysisSkipped(f"no image grid to draw the attention map on: {error}") from error


def _view(model: HookedVLM, batch: Batch, layer: int) -> str:
    name = hooks.pattern(layer)
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter=lambda n: n == name)
    view = attention_heads_view(cache[name], batch.layout, model.to_str_tokens(batch), layer=layer)
    return view.local_src

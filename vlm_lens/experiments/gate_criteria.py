"""Does an organism have a narrow gate? The measurements of issue 15 and the three criteria.

`measure_gate` asks every question of the scenes (``scene.qa``, local or relational kinds)
greedily (`vlm_lens.zoo.tasks.answer_accuracy`) with no intervention and under six knockouts
(`CONDITIONS`), measures the gate's share of the text's attention to the image side per layer
(`vlm_lens.analysis.attention_share`) and patches the gate's residual stream between scenes
that answer the same question differently (`vlm_lens.interventions.patch`, per layer). A
`GateMeasurement` keeps every number; its criteria are derived from them:

* **chance** of a kind = the majority-answer rate of that kind among the questions asked of
  these scenes (the accuracy of always giving the most common answer); accuracy above chance =
  ``acc - chance``.
* **drop** of a knockout = the fraction of the accuracy above chance it removes, pooled over the
  kinds that are above chance with no intervention (weights = questions):
  ``Σ_k n_k (acc_k - ko_k) / Σ_k n_k (acc_k - chance_k)``. Kinds at or below chance are left
  out (they have no accuracy above chance to lose); with none left the drop is undefined.
* (a) **knockout**: the gate knockout's drop is at least 0.5 and larger than the image→text
  knockout's (text after the image reads no image token but may read the gate).
* (b) **share**: the gate takes at least 0.2 of the text's attention to the image side (the
  image-side positions of `attention_share`: image tokens, row ends, gate, closing specials) in
  some layer.
* (c) **patching**: writing a source scene's gate residual (``resid_pre`` of a layer, the
  paper's site `residual_site`) into a target scene asking the same question with another answer
  makes at least 0.5 of the target's greedy answers the source's answer in some layer. A pair
  counts as flipped only when the unpatched target did not already give the source's answer.

``has_gate`` is true when all three pass. An undefined criterion (no pair, nothing above
chance) is recorded with its reason, is never 0 and never passes.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.world import world_split
    >>> model = HookedVLM.from_pretrained("organism:native")
    >>> m = measure_gate(model, world_split("test", 40, seed=0, max_objects=1), pairs=20)
    ... # doctest: +SKIP
    >>> m.has_gate, m.criteria["knockout"].passed  # doctest: +SKIP
    (False, False)
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlm_lens.analysis import attention_share
from vlm_lens.analysis.persist import register_result
from vlm_lens.batch import Batch
from vlm_lens.errors import VLMInputError
from vlm_lens.experiments.factorial_report import write_factorial
from vlm_lens.interventions import (
    PatchSource,
    gate_knockout,
    image_to_text_knockout,
    patch,
    random_image_knockout,
    record,
    residual_site,
)
from vlm_lens.model import HookedVLM
from vlm_lens.positions import PositionSpec
from vlm_lens.world import QA, Scene
from vlm_lens.zoo.tasks import answer_accuracy, question_prompt

__all__ = [
    "CONDITIONS",
    "THRESHOLDS",
    "Criterion",
    "GateMeasurement",
    "conditions",
    "flip_rates",
    "measure_gate",
    "patch_pairs",
    "write_factorial",
]

CONDITIONS: tuple[str, ...] = (
    "none",
    "gate",
    "image->text",
    "random 10 image tokens",
    "image->text, layer 0",
    "image->text, layers 1+",
)
"""The accuracy conditions, in the order of the record (see `conditions`)."""

THRESHOLDS: dict[str, float] = {"knockout": 0.5, "share": 0.2, "patching": 0.5}
"""Criterion name -> threshold (the issue's: 50% of the accuracy above chance, 20% of the
attention, 50% of the answers)."""


@register_result
@dataclass(frozen=True)
class Criterion:
    """One "has a gate" criterion.

    Attributes:
        name: ``"knockout"``, ``"share"`` or ``"patching"``.
        value: the measured value (``None`` when undefined).
        threshold: the value it must reach.
        passed: ``True``/``False``, or ``None`` when undefined.
        reason: what was compared, or why it is undefined.

    Example:
        >>> Criterion("share", 0.3, 0.2, True, "max gate share 0.300 >= 0.2").to_record()["passed"]
        True
    """

    name: str
    value: float | None
    threshold: float
    passed: bool | None
    reason: str

    def to_record(self) -> dict[str, Any]:
        """A json-ready dict."""
        return dataclasses.asdict(self)


@register_result
@dataclass(frozen=True)
class GateMeasurement:
    """Every "has a gate" number of one organism; the criteria are derived from them.

    Attributes:
        kinds: the question kinds, in order of first appearance.
        counts: kind -> number of questions.
        chance: kind -> majority-answer rate of the kind among the questions asked.
        accuracy: condition (`CONDITIONS`) -> kind -> greedy accuracy.
        gate_share: per layer, the gate's share of the text's attention to the image side.
        flip_rate: per layer, the fraction of pairs whose patched answer is the source's
            (``None`` when no pair could be built).
        baseline_flip_rate: fraction of unpatched targets already giving the source's answer.
        n_pairs: number of patching pairs.
        pairs_reason: why there is no pair (``None`` when there are pairs).
        n_scenes: number of scenes.
        measure_seed: seed of the pair draw and the random knockout (``seed`` in a record is
            the organism's, added by the driver).

    Example:
        >>> m = GateMeasurement(
        ...     kinds=("colour",), counts={"colour": 10}, chance={"colour": 0.2},
        ...     accuracy={"none": {"colour": 1.0}, "gate": {"colour": 0.2},
        ...               "image->text": {"colour": 0.9}},
        ...     gate_share=(0.1, 0.4), flip_rate=(0.0, 0.8), baseline_flip_rate=0.0,
        ...     n_pairs=5, pairs_reason=None, n_scenes=10, measure_seed=0)
        >>> round(m.drop("gate"), 3), m.has_gate
        (1.0, True)
    """

    kinds: tuple[str, ...]
    counts: dict[str, int]
    chance: dict[str, float]
    accuracy: dict[str, dict[str, float]]
    gate_share: tuple[float, ...]
    flip_rate: tuple[float, ...] | None
    baseline_flip_rate: float | None
    n_pairs: int
    pairs_reason: str | None
    n_scenes: int
    measure_seed: int

    @property
    def n_layers(self) -> int:
        """Number of decoder layers measured."""
        return len(self.gate_share)

    @property
    def above_chance(self) -> dict[str, float]:
        """Kind -> accuracy above chance with no intervention."""
        return {k: self.accuracy["none"][k] - self.chance[k] for k in self.kinds}

    @property
    def baseline_accuracy(self) -> float:
        """Accuracy over every question with no intervention."""
        total = sum(self.counts[k] for k in self.kinds)
        return sum(self.accuracy["none"][k] * self.counts[k] for k in self.kinds) / total

    def drop(self, condition: str) -> float | None:
        """The fraction of the accuracy above chance that `condition` removes, pooled over the
        kinds above chance (weights = questions); ``None`` when no kind is above chance."""
        kinds = [k for k, v in self.above_chance.items() if v > 0]
        if not kinds:
            return None
        lost = sum(
            self.counts[k] * (self.accuracy["none"][k] - self.accuracy[condition][k]) for k in kinds
        )
        above = sum(self.counts[k] * self.above_chance[k] for k in kinds)
        return lost / above

    @property
    def criteria(self) -> dict[str, Criterion]:
        """The three criteria: ``knockout``, ``share``, ``patching``."""
        return {"knockout": self._knockout(), "share": self._share(), "patching": self._patching()}

    @property
    def has_gate(self) -> bool:
        """All three criteria pass (an undefined one does not)."""
        return all(c.passed is True for c in self.criteria.values())

    def _knockout(self) -> Criterion:
        threshold = THRESHOLDS["knockout"]
        gate, image = self.drop("gate"), self.drop("image->text")
        if gate is None or image is None:
            at = ", ".join(f"{k} {self.accuracy['none'][k]:.3f}" for k in self.kinds)
            reason = f"undefined: no kind is above chance with no intervention ({at})"
            return Criterion("knockout", None, threshold, None, reason)
        passed = gate >= threshold and gate > image
        reason = (
            f"gate knockout removes {gate:.3f} of the accuracy above chance (needs >= "
            f"{threshold}), image->text knockout {image:.3f} (gate must remove more)"
        )
        return Criterion("knockout", gate, threshold, passed, reason)

    def _share(self) -> Criterion:
        threshold = THRESHOLDS["share"]
        layer = int(np.argmax(self.gate_share))
        value = float(self.gate_share[layer])
        reason = f"max gate share {value:.3f} at layer {layer} (needs >= {threshold})"
        return Criterion("share", value, threshold, value >= threshold, reason)

    def _patching(self) -> Criterion:
        threshold = THRESHOLDS["patching"]
        if self.flip_rate is None:
            return Criterion("patching", None, threshold, None, f"undefined: {self.pairs_reason}")
        layer = int(np.argmax(self.flip_rate))
        value = float(self.flip_rate[layer])
        reason = (
            f"max flip rate {value:.3f} at layer {layer} over {self.n_pairs} pairs (needs >= "
            f"{threshold}; unpatched {self.baseline_flip_rate:.3f})"
        )
        return Criterion("patching", value, threshold, value >= threshold, reason)

    def to_record(self) -> dict[str, Any]:
        """Every number, the derived drops and criteria, and ``has_gate``, as a json-ready dict."""
        out = dataclasses.asdict(self)
        out["kinds"] = list(self.kinds)
        out["gate_share"] = list(self.gate_share)
        out["flip_rate"] = None if self.flip_rate is None else list(self.flip_rate)
        out["n_layers"] = self.n_layers
        out["baseline_accuracy"] = self.baseline_accuracy
        out["drop"] = {c: self.drop(c) for c in self.accuracy if c != "none"}
        out["max_gate_share"] = max(self.gate_share)
        out["max_flip_rate"] = None if self.flip_rate is None else max(self.flip_rate)
        out["criteria"] = {name: c.to_record() for name, c in self.criteria.items()}
        out["has_gate"] = self.has_gate
        return out


def conditions(n_layers: int, seed: int = 0) -> dict[str, Callable[[Batch], Any] | None]:
    """The knockout conditions of `CONDITIONS`: name -> ``batch -> fwd_hooks`` (``None``: no
    intervention). Every knockout blocks edges before the softmax (``mode="mask"``) in every
    layer, except the layer windows named.

    Example:
        >>> list(conditions(4)) == list(CONDITIONS)
        True
    """
    rest = range(1, n_layers)
    return {
        "none": None,
        "gate": lambda b: gate_knockout(b),
        "image->text": lambda b: image_to_text_knockout(b),
        "random 10 image tokens": lambda b: random_image_knockout(b, k=10, seed=seed),
        "image->text, layer 0": lambda b: image_to_text_knockout(b, layers=[0]),
        "image->text, layers 1+": lambda b: image_to_text_knockout(b, layers=rest),
    }


def patch_pairs(scenes: Sequence[Scene], n: int, seed: int = 0) -> list[tuple[int, int, QA, QA]]:
    """Seeded (source scene, target scene, source QA, target QA) pairs asking the same question
    text with different answers: up to `n` distinct target questions, each with a random source.

    Example:
        >>> from vlm_lens.world import world_split
        >>> pairs = patch_pairs(world_split("test", 20, seed=0, max_objects=1), 5)
        >>> all(s.question == t.question and s.answer != t.answer for _, _, s, t in pairs)
        True
    """
    by_question: dict[str, list[tuple[int, QA]]] = defaultdict(list)
    for i, scene in enumerate(scenes):
        for qa in scene.qa:
            by_question[qa.question].append((i, qa))
    candidates = []
    for j, scene in enumerate(scenes):
        for qa in scene.qa:
            sources = [(i, s) for i, s in by_question[qa.question] if s.answer != qa.answer]
            if sources:
                candidates.append((j, qa, sources))
    rng = np.random.default_rng(seed)
    out = []
    for c in rng.permutation(len(candidates))[:n]:
        j, qa, sources = candidates[int(c)]
        i, source = sources[int(rng.integers(len(sources)))]
        out.append((i, j, source, qa))
    return out


def measure_gate(
    model: HookedVLM,
    scenes: Sequence[Scene],
    *,
    seed: int = 0,
    pairs: int = 50,
    batch_size: int = 32,
    progress: bool = False,
) -> GateMeasurement:
    """Every "has a gate" measurement of `model` on `scenes` (their questions: ``scene.qa``).

    Args:
        model: a `HookedVLM` whose tokenizer has the world's words (an organism).
        scenes: held-out scenes; every question of ``scene.qa`` is asked.
        seed: seed of the pair draw and of the random-token knockout.
        pairs: most patching pairs.
        batch_size: prompts per forward pass.
        progress: show progress bars.

    Returns:
        A `GateMeasurement`.

    Raises:
        VLMInputError: for no scenes or scenes without questions.
    """
    scenes = list(scenes)
    items = [(scene, qa) for scene in scenes for qa in scene.qa]
    if not items:
        raise VLMInputError(
            f"measure_gate needs scenes with questions; got {len(scenes)} scene(s) and no "
            "question (scene.qa is empty): build them with vlm_lens.world"
        )
    kinds: tuple[str, ...] = tuple(dict.fromkeys(str(qa.kind) for _, qa in items))
    counts: Counter[str] = Counter(str(qa.kind) for _, qa in items)
    chance: dict[str, float] = {}
    for kind in kinds:
        answers = Counter(qa.answer for _, qa in items if qa.kind == kind)
        chance[kind] = max(answers.values()) / counts[kind]
    n_layers = int(model.cfg.n_layers)
    accuracy: dict[str, dict[str, float]] = {}
    for name, build in conditions(n_layers, seed).items():
        result = answer_accuracy(
            model,
            scenes,
            kinds=kinds,
            batch_size=batch_size,
            intervention=build,
            progress=progress,
        )
        accuracy[name] = {k: result.accuracy[k] for k in kinds}
    placeholder = model.image_placeholder
    batches = [
        model.prepare(
            images=[s.image for s, _ in items[i : i + batch_size]],
            text=[question_prompt(qa.question, placeholder) for _, qa in items[i : i + batch_size]],
            padding_side="left",
        )
        for i in range(0, len(items), batch_size)
    ]
    share = attention_share(model, batches, progress=progress)
    gate_share = tuple(float(v) for v in share.share[:, share.groups.index("gate")])
    drawn = patch_pairs(scenes, pairs, seed)
    flip_rate: tuple[float, ...] | None = None
    baseline: float | None = None
    reason = None
    if drawn:
        flip_rate, baseline = flip_rates(
            model, scenes, drawn, batch_size=batch_size, progress=progress
        )
    else:
        reason = (
            "no pair of scenes asks the same question with different answers "
            f"({len(items)} questions over {len(scenes)} scenes)"
        )
    return GateMeasurement(
        kinds=kinds,
        counts={k: counts[k] for k in kinds},
        chance=chance,
        accuracy=accuracy,
        gate_share=gate_share,
        flip_rate=flip_rate,
        baseline_flip_rate=baseline,
        n_pairs=len(drawn),
        pairs_reason=reason,
        n_scenes=len(scenes),
        measure_seed=seed,
    )


def flip_rates(
    model: HookedVLM,
    scenes: Sequence[Scene],
    drawn: Sequence[tuple[int, int, QA, QA]],
    *,
    positions: PositionSpec = "gate",
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[tuple[float, ...], float]:
    """Patch each pair's source residual (``resid_pre`` of each layer in turn) at `positions`
    into its target and answer greedily.

    Args:
        model: the `HookedVLM`.
        scenes: the scenes the pairs index.
        drawn: pairs from `patch_pairs`.
        positions: where to patch (default: the gate).
        batch_size: prompts per forward pass.
        progress: show progress bars.

    Returns:
        Per layer, the fraction of pairs whose patched target answers with the source's answer
        and did not unpatched; and the fraction of unpatched targets already giving it.

    Example:
        >>> rates, unpatched = flip_rates(model, scenes, patch_pairs(scenes, 8))  # doctest: +SKIP
    """
    if not drawn:
        raise VLMInputError("flip_rates needs at least one pair (see patch_pairs)")
    placeholder = model.image_placeholder
    sites = [residual_site(layer) for layer in range(int(model.cfg.n_layers))]
    targets = [dataclasses.replace(scenes[j], qa=(qa,)) for _, j, _, qa in drawn]
    sources: list[PatchSource] = []
    for start in range(0, len(drawn), batch_size):  # the chunks answer_accuracy will run
        chunk = drawn[start : start + batch_size]
        batch = model.prepare(
            images=[scenes[i].image for i, _, _, _ in chunk],
            text=[question_prompt(qa.question, placeholder) for _, _, qa, _ in chunk],
            padding_side="left",
        )
        sources.append(record(model, batch, sites=sites, positions=positions))
    wanted = [s.answer for _, _, s, _ in drawn]

    def predicted(build: Callable[[Batch], Any] | None) -> list[str]:
        result = answer_accuracy(
            model,
            targets,
            kinds=tuple(dict.fromkeys(qa.kind for *_, qa in drawn)),
            batch_size=batch_size,
            intervention=build,
            progress=progress,
        )
        return [row[4] for row in result.answers]

    clean = predicted(None)
    rates = []
    for site in sites:
        chunks: Iterator[PatchSource] = iter(sources)

        def patched_run(b: Batch, site: str = site, chunks: Iterator[PatchSource] = chunks) -> Any:
            return patch(next(chunks), b, sites=site)

        patched = predicted(patched_run)
        flips = [c != w and p == w for c, p, w in zip(clean, patched, wanted, strict=True)]
        rates.append(sum(flips) / len(flips))
    baseline = sum(c == w for c, w in zip(clean, wanted, strict=True)) / len(wanted)
    return tuple(rates), baseline

"""Built-in model organisms: names that `HookedVLM.from_pretrained` resolves to shipped folders.

``HookedVLM.from_pretrained("organism:native")`` loads the native organism (a tiny Chameleon)
and ``"organism:nonnative"`` the non-native one (a tiny LLaVA), offline, through exactly the same
Hugging Face path as any checkpoint folder. The ``organism:`` prefix cannot clash with a hub id.

Example:
    >>> sorted(ORGANISMS)
    ['native', 'nonnative']
    >>> resolve("facebook/chameleon-7b")
    'facebook/chameleon-7b'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vlm_lens.checkpoints import register_resolver

PREFIX = "organism:"
"""Prefix of the built-in names."""

WEIGHTS = Path(__file__).parent / "weights"
"""Folder that holds one Hugging Face checkpoint folder per organism."""

ORGANISMS: dict[str, str] = {
    "native": "tiny Chameleon: VQ tokenizer and decoder trained from scratch, both directions",
    "nonnative": "tiny LLaVA: text decoder, then CLIP tower, then projector on image-to-text",
}
"""Built-in organism -> what it is."""


def organism_path(name: str) -> Path:
    """The checkpoint folder of a built-in organism (``"native"`` or ``"nonnative"``).

    Raises:
        ValueError: for an unknown organism, listing the known ones.
        FileNotFoundError: if the weights are missing from this installation.
    """
    if name not in ORGANISMS:
        known = ", ".join(PREFIX + n for n in ORGANISMS)
        raise ValueError(f"unknown organism {PREFIX + name!r}; built-in organisms: {known}")
    path = WEIGHTS / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the weights of {PREFIX + name!r} are missing from {path}; re-create them with "
            f"python -m vlm_lens.zoo.{name} --out {path}"
        )
    return path


def resolve(name_or_path: str | os.PathLike[str]) -> str | os.PathLike[str] | Path:
    """A built-in name's folder, or `name_or_path` unchanged."""
    if isinstance(name_or_path, str) and name_or_path.startswith(PREFIX):
        return organism_path(name_or_path[len(PREFIX) :])
    return name_or_path


register_resolver(PREFIX, organism_path)


@dataclass(frozen=True)
class ModelDefaults:
    """What the narrow-gate experiment uses for a model unless told otherwise.

    Attributes:
        prompt: the default prompt (``<image>`` marks the image).
        world_question: the question the model answers about a world scene (its answers are
            scored by `vlm_lens.zoo.tasks.answer_accuracy`), or ``None``.
        threads: CPU threads it runs best on (the organisms' tiny matrices lose time to
            threading), or ``None`` for torch's default.
        task_prompts: its own prompts for the evaluation tasks (`vlm_lens.evaluate`):
            ``"vqa"`` (with ``{question}``), ``"caption"`` and ``"chi"``, or ``None`` for the
            paper's templates.
    """

    prompt: str
    world_question: str | None = None
    threads: int | None = None
    task_prompts: Mapping[str, str] | None = None


GENERIC_DEFAULTS = ModelDefaults(prompt="<image>This is a picture of a")
"""Any model that is not an organism (the paper's "This animal is a", generalised)."""

ORGANISM_DEFAULTS = ModelDefaults(
    prompt="<image>what colour is the shape?",
    world_question="what colour is the shape?",
    threads=1,
    task_prompts={  # the formats they were trained on (`vlm_lens.zoo.tasks`)
        "vqa": "<image>{question}",
        "caption": "<image>describe the image.",
        "chi": "<image>what colour is the shape?",
    },
)
"""The organisms: their colour question (the world scenes are labelled by its answer) and
the task formats they were trained on (their vocabulary has no words of the paper's
templates)."""


def model_defaults(name: str | os.PathLike[str]) -> ModelDefaults:
    """The experiment defaults of a model name: the organisms' own, else the generic ones.

    Example:
        >>> model_defaults("organism:native").threads, model_defaults("llava-hf/x").prompt
        (1, '<image>This is a picture of a')
    """
    return ORGANISM_DEFAULTS if str(name).startswith(PREFIX) else GENERIC_DEFAULTS

"""The prompt of each evaluation item, per model.

A model with task prompts of its own (the organisms: `vlm_lens.zoo.registry.ModelDefaults`,
the formats they were trained on) gets those. Any other model gets the paper's templates: VQA
``"{question}\\nAnswer the question using a single word or phrase."``, captions ``"Provide a
one-sentence caption for the provided image."`` (after the image), wrapped in the processor's
chat template when it has one (a user turn with the image and the text, then the generation
prompt); χ^out takes the completion prompt ``"<image>This is a picture of a"`` (the paper's
"This animal is a", generalised) without a chat template, since its last token is read.

Example:
    >>> from vlm_lens.evaluate.tasks import TASKS
    >>> template("organism:native", TASKS["vqav2"])
    '<image>{question}'
    >>> template("some/model", TASKS["vqav2"])
    '<image>{question}\\nAnswer the question using a single word or phrase.'
"""

from __future__ import annotations

from typing import Any

from vlm_lens.errors import VLMInputError
from vlm_lens.evaluate.items import EvalItem
from vlm_lens.evaluate.tasks import Task
from vlm_lens.zoo.registry import GENERIC_DEFAULTS, model_defaults

__all__ = ["PLACEHOLDER", "item_prompt", "prompt_kind", "template"]

PLACEHOLDER = "<image>"
"""Marks the image in a template; replaced by the model's own placeholder."""

_KINDS = {"vqa_accuracy": "vqa", "cider": "caption", "chi_out": "chi"}


def prompt_kind(task: Task) -> str:
    """``"vqa"``, ``"caption"`` or ``"chi"``: which prompt a task's metric needs."""
    if task.metric not in _KINDS:
        raise VLMInputError(f"task {task.name!r} has an unknown metric {task.metric!r}")
    return _KINDS[task.metric]


def template(model_name: str, task: Task) -> str:
    """The prompt template of `task` for `model_name` (``<image>`` and ``{question}`` marked),
    before any chat template."""
    kind = prompt_kind(task)
    own = model_defaults(model_name).task_prompts
    if own and kind in own:
        return own[kind]
    if kind == "chi" or task.prompt is None:
        return GENERIC_DEFAULTS.prompt
    return PLACEHOLDER + task.prompt


def item_prompt(model: Any, model_name: str, task: Task, item: EvalItem) -> str:
    """The full prompt of `item` for `model`: its template filled in, the image marked with
    the model's placeholder, wrapped in the chat template where the paper's templates apply
    and the processor has one.

    Raises:
        VLMInputError: for a VQA item without a question.
    """
    kind = prompt_kind(task)
    own = model_defaults(model_name).task_prompts
    text = template(model_name, task)
    if "{question}" in text:
        if item.question is None:
            raise VLMInputError(f"VQA item {item.id!r} has no question")
        text = text.replace("{question}", item.question)
    chat = getattr(model.processor, "chat_template", None)
    if chat and kind != "chi" and not (own and kind in own):
        body = text.replace(PLACEHOLDER, "", 1)
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": body}]}
        ]
        text = model.processor.apply_chat_template(messages, add_generation_prompt=True)
        if model.image_placeholder not in text:  # a template that writes no image marker
            text = PLACEHOLDER + text
    return text.replace(PLACEHOLDER, model.image_placeholder)

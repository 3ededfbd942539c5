"""Task evaluation for the paper's Table 1: data readers, tasks and metrics.

`TASKS` maps a task name (``"vqav2"``, ``"coco-captions"``, ``"flickr30k"``,
``"imagenet-chi"``) to a `Task` that reads local data into `EvalItem` objects and scores
predictions with `vqa_accuracy`, `cider` or `chi_out`. `evaluate` runs a task on a model under
named conditions (`parse_conditions`: ``baseline``, ``gate``, ``image->text``, ``random``,
``NAME@lastW``) or user ones, resumably, and returns an `EvaluationResult`.
"""

from vlm_lens.evaluate.chi import chi_out
from vlm_lens.evaluate.cider import cider
from vlm_lens.evaluate.conditions import (
    DEFAULT_CONDITIONS,
    Condition,
    ConditionContext,
    parse_conditions,
    progressive_conditions,
)
from vlm_lens.evaluate.items import EvalItem
from vlm_lens.evaluate.result import EvaluationResult, load_tables, tables_markdown
from vlm_lens.evaluate.runner import evaluate, model_name_of
from vlm_lens.evaluate.tasks import CAPTION_PROMPT, TASKS, VQA_PROMPT, Task
from vlm_lens.evaluate.vqa import vqa_accuracy

__all__ = [
    "CAPTION_PROMPT",
    "TASKS",
    "VQA_PROMPT",
    "EvalItem",
    "Task",
    "chi_out",
    "cider",
    "vqa_accuracy",
    # running
    "DEFAULT_CONDITIONS",
    "Condition",
    "ConditionContext",
    "EvaluationResult",
    "evaluate",
    "load_tables",
    "model_name_of",
    "parse_conditions",
    "progressive_conditions",
    "tables_markdown",
]

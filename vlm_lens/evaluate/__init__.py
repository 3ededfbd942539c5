"""Task evaluation for the paper's Table 1: data readers, tasks and metrics.

`TASKS` maps a task name (``"vqav2"``, ``"coco-captions"``, ``"flickr30k"``,
``"imagenet-chi"``) to a `Task` that reads local data into `EvalItem` objects
(`vlm_lens.evaluate.readers`) and scores predictions with `vqa_accuracy` (the official VQA
evaluation), `cider` (CIDEr-D by pycocoevalcap) or representations with `chi_out` (χ, k = 30).
`vlm_lens.evaluate.fixtures` writes tiny datasets in each real format from the synthetic world.
`evaluate` runs a task on a model under named conditions (`parse_conditions`: ``baseline``,
``gate``, ``image->text``, ``random``, ``NAME@lastW``) or user ones, resumably, and returns an
`EvaluationResult`.

Example:
    >>> import tempfile
    >>> from vlm_lens.evaluate.fixtures import write_vqav2
    >>> items = TASKS["vqav2"].read(write_vqav2(tempfile.mkdtemp(), n_images=2))
    >>> predictions = {item.id: item.references[0] for item in items}
    >>> 0.0 < TASKS["vqav2"].score(predictions, items) <= 1.0
    True
"""

from vlm_lens.evaluate.chi import chi_out
from vlm_lens.evaluate.cider_score import cider, cider_per_item
from vlm_lens.evaluate.conditions import (
    DEFAULT_CONDITIONS,
    Condition,
    ConditionContext,
    parse_conditions,
    progressive_conditions,
)
from vlm_lens.evaluate.items import EvalItem, load_item_image
from vlm_lens.evaluate.readers import (
    read_class_folders,
    read_hf_dataset,
    read_karpathy,
    read_karpathy_folder,
    read_vqav2,
    read_vqav2_folder,
)
from vlm_lens.evaluate.result import EvaluationResult, load_tables, tables_markdown
from vlm_lens.evaluate.runner import evaluate, model_name_of
from vlm_lens.evaluate.tasks import CAPTION_PROMPT, CHI_K, TASKS, VQA_PROMPT, Task
from vlm_lens.evaluate.vqa import normalize_answer, vqa_accuracy

__all__ = [
    "CAPTION_PROMPT",
    "CHI_K",
    "TASKS",
    "VQA_PROMPT",
    "EvalItem",
    "Task",
    "chi_out",
    "cider",
    "cider_per_item",
    "load_item_image",
    "normalize_answer",
    "read_class_folders",
    "read_hf_dataset",
    "read_karpathy",
    "read_karpathy_folder",
    "read_vqav2",
    "read_vqav2_folder",
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

"""Task evaluation for the paper's Table 1: data readers, tasks and metrics.

`TASKS` maps a task name (``"vqav2"``, ``"coco-captions"``, ``"flickr30k"``,
``"imagenet-chi"``) to a `Task` that reads local data into `EvalItem` objects and scores
predictions with `vqa_accuracy`, `cider` or `chi_out`.
"""

from vlm_lens.evaluate.chi import chi_out
from vlm_lens.evaluate.cider import cider
from vlm_lens.evaluate.items import EvalItem
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
]

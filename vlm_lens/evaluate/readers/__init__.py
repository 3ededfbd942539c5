"""Readers of local evaluation data in the formats people have on disk.

- `read_vqav2` / `read_vqav2_folder`: the official VQAv2 questions and annotations JSON and a
  COCO image folder;
- `read_karpathy` / `read_karpathy_folder`: Karpathy-split caption JSON (COCO, Flickr30k) and
  an image folder;
- `read_class_folders`: one folder per class (ImageNet style);
- `read_hf_dataset` / `load_hf_dataset`: a Hugging Face ``datasets`` dataset.

Every reader returns `vlm_lens.evaluate.EvalItem` objects and raises
`vlm_lens.errors.VLMInputError` naming the problem and the fix on bad data.
"""

from vlm_lens.evaluate.readers._common import random_subset
from vlm_lens.evaluate.readers.class_folders import read_class_folders
from vlm_lens.evaluate.readers.hf import is_hf_dataset_dir, load_hf_dataset, read_hf_dataset
from vlm_lens.evaluate.readers.karpathy import (
    PAPER_CAPTION_IMAGES,
    read_karpathy,
    read_karpathy_folder,
)
from vlm_lens.evaluate.readers.vqav2 import (
    PAPER_VQA_QUESTIONS,
    find_vqav2_files,
    read_vqav2,
    read_vqav2_folder,
)

__all__ = [
    "PAPER_CAPTION_IMAGES",
    "PAPER_VQA_QUESTIONS",
    "find_vqav2_files",
    "is_hf_dataset_dir",
    "load_hf_dataset",
    "random_subset",
    "read_class_folders",
    "read_hf_dataset",
    "read_karpathy",
    "read_karpathy_folder",
    "read_vqav2",
    "read_vqav2_folder",
]

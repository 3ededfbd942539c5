"""vlm_lens: TransformerLens for vision-language models.

`HookedVLM` wraps Chameleon, Emu3, Janus and LLaVA in a TransformerLens bridge, knows the role of
every position (`TokenLayout`: image, gate, text...) and forwards image inputs on every call.

Example:
    >>> from vlm_lens import HookedVLM, hooks
    >>> from vlm_lens.testing import build_tiny, sample_image
    >>> tiny = build_tiny("llava")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
    >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    >>> model(batch).shape[:2] == batch.input_ids.shape
    True
"""

from vlm_lens import hooks
from vlm_lens.adapters import VLMAdapter, register_family, supported_families
from vlm_lens.batch import Batch
from vlm_lens.errors import UnsupportedModelError, VLMInputError, VLMLensError
from vlm_lens.layout import ROLES, ImageSpan, TokenLayout, TokenSpec
from vlm_lens.model import HookedVLM
from vlm_lens.zoo import registry as _organisms  # noqa: F401 (registers the organism: names)

__version__ = "0.1.0"

__all__ = [
    "ROLES",
    "Batch",
    "HookedVLM",
    "ImageSpan",
    "TokenLayout",
    "TokenSpec",
    "UnsupportedModelError",
    "VLMAdapter",
    "VLMInputError",
    "VLMLensError",
    "hooks",
    "register_family",
    "supported_families",
]

"""Shared fixtures: tiny offline models of every family, wrapped and as plain HF references."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jaxtyping
import pytest
import torch

from vlm_lens import Batch, HookedVLM
from vlm_lens.testing import TinyVLM, build_tiny, sample_image

warnings.filterwarnings("ignore", message=".*torchvision.*")


@contextmanager
def unchecked_types() -> Iterator[None]:
    """Turn the runtime type check off inside the block: for calls that violate the annotations
    on purpose, to pin the error vlm_lens itself raises for users (who run without beartype)."""
    previous = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", previous)


@pytest.fixture(autouse=True)
def _runtime_type_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every annotation is checked at runtime (pyproject's ``--jaxtyping-packages``), except in
    tests marked ``bad_input_types``, which pass badly typed arguments on purpose."""
    if request.node.get_closest_marker("bad_input_types") is None:
        yield
        return
    with unchecked_types():
        yield


# (id, family, builder kwargs): every variant the parity suite must cover.
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("chameleon", "chameleon", {}),
    ("chameleon-swin", "chameleon", {"swin_norm": True}),
    ("emu3", "emu3", {}),
    ("janus-tied", "janus", {}),
    ("janus-untied", "janus", {"tie_word_embeddings": False}),
    ("llava-llama", "llava", {}),
    ("llava-mistral", "llava", {"text_backbone": "mistral"}),
    ("llava-qwen2", "llava", {"text_backbone": "qwen2"}),
]
FAMILY_VARIANTS = [
    v for v in VARIANTS if v[0] in ("chameleon", "emu3", "janus-tied", "llava-llama")
]


@dataclass
class Wrapped:
    """A HookedVLM, a deep copy of the HF model taken before wrapping, and sample inputs."""

    tiny: TinyVLM
    model: HookedVLM
    reference: torch.nn.Module

    def batch(self, n_prompts: int = 1, **kwargs: Any) -> Batch:
        """A batch of `n_prompts` prompts of different lengths, one image each."""
        size = self.tiny.image_size
        images = [sample_image(seed=i, size=size) for i in range(n_prompts)]
        texts = [self.tiny.prompt + " more" * i for i in range(n_prompts)]
        return self.model.prepare(images=images, text=texts, **kwargs)


def wrap(family: str, **kwargs: Any) -> Wrapped:
    """Build a tiny model of `family`, keep an untouched deep copy, and wrap the original."""
    tiny = build_tiny(family, **kwargs)
    reference = copy.deepcopy(tiny.model)
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    return Wrapped(tiny, model, reference)


@pytest.fixture(scope="module", params=FAMILY_VARIANTS, ids=[v[0] for v in FAMILY_VARIANTS])
def wrapped(request: pytest.FixtureRequest) -> Wrapped:
    """One wrapped tiny model per family (Chameleon, Emu3, Janus, LLaVA)."""
    _, family, kwargs = request.param
    return wrap(family, **kwargs)


@pytest.fixture(scope="module", params=FAMILY_VARIANTS, ids=[v[0] for v in FAMILY_VARIANTS])
def both(request: pytest.FixtureRequest) -> dict[str, Wrapped]:
    """The same tiny model of each family with eager attention and with SDPA."""
    _, family, kwargs = request.param
    eager, sdpa = wrap(family, **kwargs), wrap(family, **kwargs)
    sdpa.model.set_attn_implementation("sdpa")
    return {"eager": eager, "sdpa": sdpa}

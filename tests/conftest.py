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
from vlm_lens.testing import TinyVariant, TinyVLM, build_tiny, sample_image, tiny_variants

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


# Every registered tiny variant (vlm_lens.testing.register_tiny) and each family's primary one.
VARIANTS: tuple[TinyVariant, ...] = tiny_variants()
PRIMARY: tuple[TinyVariant, ...] = tiny_variants(primary=True)


@dataclass
class Wrapped:
    """A HookedVLM, a deep copy of the HF model taken before wrapping, and sample inputs."""

    tiny: TinyVLM
    model: HookedVLM
    reference: torch.nn.Module
    registered: TinyVariant | None = None  # the registry entry it was built from, if any

    def batch(self, n_prompts: int = 1, **kwargs: Any) -> Batch:
        """A batch of `n_prompts` prompts of different lengths, one image each."""
        size = self.tiny.image_size
        images = [sample_image(seed=i, size=size) for i in range(n_prompts)]
        texts = [self.tiny.prompt + " more" * i for i in range(n_prompts)]
        return self.model.prepare(images=images, text=texts, **kwargs)


def wrap(family: str, **kwargs: Any) -> Wrapped:
    """Build a tiny model of `family`, keep an untouched deep copy, and wrap the original."""
    return _wrap(build_tiny(family, **kwargs), None)


def wrap_variant(variant: TinyVariant, **overrides: Any) -> Wrapped:
    """`wrap` for a registered tiny variant; `overrides` (``dtype=``, ``seed=``) go to its
    builder."""
    return _wrap(variant.build(**overrides), variant)


def _wrap(tiny: TinyVLM, registered: TinyVariant | None) -> Wrapped:
    reference = copy.deepcopy(tiny.model)
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    return Wrapped(tiny, model, reference, registered)


@pytest.fixture(scope="module", params=PRIMARY, ids=[v.name for v in PRIMARY])
def wrapped(request: pytest.FixtureRequest) -> Wrapped:
    """One wrapped tiny model per family: its primary registered variant."""
    return wrap_variant(request.param)


@pytest.fixture(scope="module", params=PRIMARY, ids=[v.name for v in PRIMARY])
def both(request: pytest.FixtureRequest) -> dict[str, Wrapped]:
    """The primary tiny model of each family with eager attention and with SDPA."""
    eager, sdpa = wrap_variant(request.param), wrap_variant(request.param)
    sdpa.model.set_attn_implementation("sdpa")
    return {"eager": eager, "sdpa": sdpa}


# Scripts that write golden files run in other environments (dadapy's): not test modules.
collect_ignore_glob = ["golden/*.py"]

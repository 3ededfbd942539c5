"""The registry the contract suite is parametrised over: every registered family has a tiny
variant, and each variant builds a model of the family it claims."""

from __future__ import annotations

import copy
from collections import Counter

import pytest

from tests.conftest import VARIANTS, Wrapped
from vlm_lens import HookedVLM
from vlm_lens.adapters import supported_families
from vlm_lens.testing import ImageFrame, register_tiny, tiny_llava, tiny_variant, tiny_variants
from vlm_lens.testing.registry import _VARIANTS


def test_every_registered_family_has_a_tiny_variant() -> None:
    covered = {v.family for v in tiny_variants()}
    missing = [f for f in supported_families() if f not in covered]
    assert not missing, (
        f"families registered with vlm_lens.adapters.register_family but without a tiny "
        f"variant: {missing}. Add a builder to vlm_lens/testing/tiny_models.py and register it "
        "in vlm_lens/testing/registry.py with register_tiny(name, builder, family=..., "
        "frame=ImageFrame(...)) (CONTRIBUTING.md, 'Adding a model family')."
    )
    unknown = sorted(covered - set(supported_families()))
    assert not unknown, f"tiny variants of unregistered families: {unknown}"


def test_one_primary_variant_per_family() -> None:
    primaries = Counter(v.family for v in tiny_variants(primary=True))
    assert primaries == Counter({f: 1 for f in supported_families()})
    assert len({v.name for v in VARIANTS}) == len(VARIANTS)


def test_variant_builds_its_family(variant: Wrapped) -> None:
    """The builder's model is what the registry says: its adapter is the variant's family, it
    is an eval-mode, eager-attention model with ``config.architectures`` set."""
    registered = variant.registered
    assert registered is not None and tiny_variant(registered.name) is registered
    assert variant.tiny.family == registered.family
    assert variant.model.adapter.family == registered.family
    assert variant.reference.config.architectures == [type(variant.reference).__name__]
    assert not variant.reference.training
    assert variant.model.attn_implementation == "eager"
    for key, value in registered.kwargs.items():  # the variant really is a different model
        if key == "text_backbone":
            assert variant.reference.config.text_config.model_type == value
        else:
            assert getattr(variant.reference.config, key) == value


def test_from_hf_copies_by_default(variant: Wrapped) -> None:
    """from_hf copies by default: the user's model stays a plain HF model; copy_model=False
    bridges it in place."""
    module_types = {type(m).__name__ for m in variant.tiny.model.modules()}
    assert not any("Bridge" in name for name in module_types)
    plain = copy.deepcopy(variant.reference)
    in_place = HookedVLM.from_hf(plain, variant.tiny.processor, copy_model=False)
    assert any("Bridge" in type(m).__name__ for m in in_place.hf_model.modules())


def test_register_tiny_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_tiny("llava-llama", tiny_llava, family="llava", frame=ImageFrame())
    with pytest.raises(ValueError, match="primary"):
        register_tiny("x", tiny_llava, family="llava", frame=ImageFrame(), primary=True)
    assert "x" not in _VARIANTS
    with pytest.raises(KeyError, match="registered: chameleon"):
        tiny_variant("nope")

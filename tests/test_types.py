"""The runtime type check is on: a public function called with a tensor of the wrong shape, dtype
or an inconsistent dimension raises a jaxtyping error (pyproject's ``--jaxtyping-packages``
instruments every module of vlm_lens with beartype), so the check cannot be silently off."""

from __future__ import annotations

import jaxtyping
import pytest
import torch

from vlm_lens.engine.attention_rows import pattern_rows
from vlm_lens.interventions import steer
from vlm_lens.layout import TokenLayout, TokenSpec

SPEC = TokenSpec(image_token_ids=frozenset({9}), tokens_per_image=2)
LAYOUT = TokenLayout.from_input_ids(torch.tensor([[1, 9, 9, 5, 6]]), SPEC)


def test_check_is_installed_and_enabled() -> None:
    assert not jaxtyping.config.jaxtyping_disable, "JAXTYPING_DISABLE is set"
    assert hasattr(steer, "__wrapped__"), "vlm_lens was imported before the import hook"


def test_wrong_rank_raises() -> None:
    steer(LAYOUT, torch.ones(8), layers=0)  # [d_model]: fine
    with pytest.raises(jaxtyping.TypeCheckError, match="vector"):
        steer(LAYOUT, torch.ones(2, 8), layers=0)


def test_wrong_dtype_raises() -> None:
    with pytest.raises(jaxtyping.TypeCheckError, match="vector"):
        steer(LAYOUT, torch.ones(8, dtype=torch.long), layers=0)


def test_dimension_shared_between_arguments_is_checked() -> None:
    query, keys = torch.randn(3, 2, 4), torch.randn(5, 2, 4)  # [n_rows, head, d], [pos, kv, d]
    assert pattern_rows(query, keys, torch.ones(3, 5, dtype=torch.bool), 0.5).shape == (2, 3, 5)
    with pytest.raises(jaxtyping.TypeCheckError, match="visible"):  # pos 6 != 5
        pattern_rows(query, keys, torch.ones(3, 6, dtype=torch.bool), 0.5)

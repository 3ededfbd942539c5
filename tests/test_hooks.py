"""Hook-name helpers. That every name resolves in every family, the residual identities, the
multimodal hook points and the run paths are part of the family contract (tests/contract/:
test_residuals.py, test_image_embeds.py, test_generation.py)."""

from __future__ import annotations

import pytest

from vlm_lens import hooks


def test_helpers_reject_bad_layers() -> None:
    with pytest.raises(ValueError, match="non-negative int"):
        hooks.resid_pre(-1)
    with pytest.raises(ValueError, match="known"):
        hooks.layer_hook("resid", 0)

"""The private names vlm_lens still uses exist, and the behaviours it copies still match.

`vlm_lens.engine.compat` lists every private name of TransformerLens, transformers and torch
in use; `missing()` names the pin to check when one disappears. The engine's two copies of a
dependency's behaviour are checked against the dependency itself, for every variant:

* the fast norms return what TransformerLens' own ``NormalizationBridge.forward`` returns;
* Hugging Face's attention module, run by `DispatchingAttention`, fires ``hook_q/k/v``,
  ``hook_rot_q`` and ``hook_rot_k`` on the same tensors as TransformerLens' reconstruction
  (each layer compared with the reconstruction run in that layer alone), and its output equals
  the reconstruction's under an eager mask (the reconstruction is HF eager, so this is exact).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import VARIANTS, wrap_variant
from transformer_lens.model_bridge import TransformerBridge

from vlm_lens import hooks
from vlm_lens.engine import compat
from vlm_lens.engine.attention import DispatchingAttention
from vlm_lens.engine.norm import FAST_NORMS

SITES = ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k")


def test_no_private_name_is_missing() -> None:
    assert compat.missing() == []


def test_a_missing_name_is_reported_with_its_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    owner = next(c for c in TransformerBridge.__mro__ if "_register_aliases" in vars(c))
    monkeypatch.delattr(owner, "_register_aliases")
    gone = compat.missing()
    assert len(gone) == 1 and "_register_aliases" in gone[0]
    assert compat.PINS["transformer_lens"] in gone[0]


def _unexported_imports() -> set[str]:
    """Every name vlm_lens imports from a transformers or TransformerLens module that the
    module does not export (underscore names, or names missing from its ``__all__``)."""
    import ast
    import importlib
    from pathlib import Path

    found: set[str] = set()
    for path in Path(compat.__file__).parents[1].rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            if node.module.split(".")[0] not in ("transformers", "transformer_lens"):
                continue
            exported = getattr(importlib.import_module(node.module), "__all__", None)
            for alias in node.names:
                if alias.name.startswith("_") or (
                    exported is not None and alias.name not in exported
                ):
                    found.add(f"{node.module}.{alias.name}")
    return found


def test_every_unexported_import_is_listed() -> None:
    assert _unexported_imports() <= set(compat.PRIVATE_NAMES)


def test_a_missing_module_function_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.models.llava_next import modeling_llava_next

    monkeypatch.delattr(modeling_llava_next, "unpad_image")
    gone = compat.missing()
    assert len(gone) == 1 and "unpad_image" in gone[0]
    assert compat.PINS["transformers"] in gone[0]


@pytest.fixture(scope="module", params=VARIANTS, ids=[v.name for v in VARIANTS])
def sdpa(request: pytest.FixtureRequest) -> Any:
    w = wrap_variant(request.param)
    w.model.set_attn_implementation("sdpa")
    return w


def test_fast_norms_return_what_transformer_lens_returns(sdpa: Any) -> None:
    norms = [m for m in sdpa.model.bridge.modules() if type(m) in FAST_NORMS.values()]
    assert norms, "the bridge has no fast norm: the components were not substituted"
    generator = torch.Generator().manual_seed(0)
    for norm in norms:
        parent = next(c for c, fast in FAST_NORMS.items() if fast is type(norm))
        width = norm.original_component.weight.shape
        x = torch.randn(2, 5, *width, generator=generator)
        with torch.no_grad():
            assert torch.equal(norm(x), parent.forward(norm, x)), norm.name


def test_every_decoder_layer_takes_the_hf_path(sdpa: Any) -> None:
    for block in sdpa.model.bridge.blocks:
        assert isinstance(block.attn, DispatchingAttention)
        assert block.attn.reconstruction_reason() is None


def _capture(model: Any, batch: Any, layer: int, reconstruct: bool) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Any:
        def keep(tensor: torch.Tensor, hook: Any) -> None:
            seen[name] = tensor.detach().clone()

        return keep

    names = [f"blocks.{layer}.attn.{site}" for site in SITES] + [hooks.attn_out(layer)]
    fwd: list[Any] = [(name, keeper(name)) for name in names]
    if reconstruct:  # a hook on the pattern makes this layer run TransformerLens' own forward
        fwd.append((hooks.pattern(layer), lambda tensor, hook: None))
    with torch.no_grad():
        model.run_with_hooks(batch, fwd_hooks=fwd)
    return seen


def test_hf_path_fires_hooks_on_the_reconstructions_tensors(sdpa: Any) -> None:
    """Layer by layer (the layers before it run the same path in both runs): hook_q/k/v and
    hook_rot_q/k see bit-identical tensors; the attention output differs only by SDPA's
    rounding against eager, at real positions."""
    batch = sdpa.batch(2)
    real = ~batch.layout.mask("pad")
    for layer in range(sdpa.model.cfg.n_layers):
        fast = _capture(sdpa.model, batch, layer, reconstruct=False)
        slow = _capture(sdpa.model, batch, layer, reconstruct=True)
        assert fast.keys() == slow.keys() and len(fast) == len(SITES) + 1, sorted(fast)
        for name in fast:
            if name == hooks.attn_out(layer):
                # at real positions (fully masked padding rows differ between the kernels)
                torch.testing.assert_close(fast[name][real], slow[name][real])
            else:
                assert torch.equal(fast[name], slow[name]), name


def test_edited_rotated_keys_reach_the_kv_cache(sdpa: Any) -> None:
    """As in TransformerLens' reconstruction, ``hook_rot_k`` fires before the cache update: keys
    edited in a prefix pass are what a later pass reads from the cache. A suffix run without
    the hook on a prefix cache made with it equals a full run that edits the prefix keys only
    (to SDPA rounding), and differs from the unedited run."""
    batch = sdpa.batch(1)
    upto = int(batch.layout.positions("gate")[0][0])

    def halve_prefix_keys(tensor: torch.Tensor, hook: Any) -> torch.Tensor:
        assert tensor.shape[1] in (upto, batch.input_ids.shape[1])  # [batch, pos, head, d_head]
        out = tensor.clone()
        out[:, :upto] *= 0.5
        return out

    edit = [(hooks.rot_k(0), halve_prefix_keys)]
    with torch.no_grad():
        full = sdpa.model.run_with_hooks(batch, fwd_hooks=edit)[:, upto:]
        clean = sdpa.model(batch)[:, upto:]
        with sdpa.model.hooks(fwd_hooks=edit):
            prefix = sdpa.model.prefix_cache(batch, upto=upto)
        suffix = sdpa.model.run_suffix(prefix)
    torch.testing.assert_close(suffix, full)
    assert not torch.allclose(suffix, clean, atol=1e-4)

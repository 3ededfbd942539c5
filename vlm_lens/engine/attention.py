"""The fast attention path: each decoder layer runs Hugging Face's own attention code unless a
hook needs TransformerLens' eager reconstruction.

TransformerLens 4.3's ``PositionEmbeddingsAttentionBridge`` always rebuilds attention eagerly
(``q @ k^T``, mask, fp32 softmax, ``@ v``) so that ``hook_attn_scores`` and ``hook_pattern``
can fire, even when nothing reads them: at 1,000+ image tokens that is most of a forward's
cost. `DispatchingAttention`, the bridge component vlm_lens builds instead (through the
bridge's public ``post_adapter_hook``, `vlm_lens.engine.components`), decides per call:

* **TransformerLens' reconstruction** (its own ``forward``, exactly HF eager) when the layer
  needs it: a hook on its ``hook_attn_scores`` or ``hook_pattern`` (forward or backward,
  however it got there: ``run_with_cache`` whose ``names_filter`` matches them,
  ``run_with_hooks``, ``hooks()``, ``generate(fwd_hooks=...)``, a zero-mode knockout,
  ``add_hook``), a hook on a point only the reconstruction fires (``hook_q_normed``,
  ``hook_k_normed``), the model's implementation is ``"eager"``, or a TransformerLens option
  the HF code does not have is on (``use_attn_result``, ``use_split_qkv_input``,
  ``use_attn_in``). One exception: when every hook on ``hook_attn_scores`` is a mask-only
  knockout hook (`vlm_lens.engine.score_mask`) and nothing hooks the pattern, an SDPA layer
  stays fused and the blocked edges leave its boolean mask.
* **Hugging Face's own attention module** otherwise: its ``forward`` runs as in the plain HF
  model (projections through the bridge's linear components, so ``hook_q/k/v/z`` fire; q/k
  norms; RoPE), and its attention function comes from transformers' public registry: the
  decoder's implementation is set to ``"vlm_lens:<base>"`` (``"vlm_lens:sdpa"``...),
  registered with ``AttentionInterface`` (`dispatch`) and with ``AttentionMaskInterface``
  (the base's own mask function, so masks are the base's). `dispatch` fires ``hook_rot_q`` and
  ``hook_rot_k`` on the rotated queries and new keys, updates the KV cache with the (possibly
  edited) keys through the public ``Cache.update``, as TransformerLens does, and calls the base
  function (``ALL_ATTENTION_FUNCTIONS[base]``) with exactly the arguments HF passes. So logits
  are bit-identical to the HF model run with the base implementation, by construction.

The fast path is an allow-list: HF attention classes whose hook semantics the contract suite
checks (`TESTED_ATTENTION_MODULES`). A layer of any other class keeps TransformerLens' own
forward and a warning names the class once. Any other model in the process (an HF copy, the
vision tower) calls `dispatch` only through its own ``"vlm_lens:..."`` name, and `dispatch`
hands a module vlm_lens does not drive straight to the base function.

Example:
    >>> from vlm_lens import HookedVLM
    >>> from vlm_lens.testing import build_tiny
    >>> tiny = build_tiny("llava")
    >>> model = HookedVLM.from_hf(tiny.model, tiny.processor).set_attn_implementation("sdpa")
    >>> attn = model.bridge.blocks[0].attn
    >>> attn.attention_implementation(), attn.reconstruction_reason()
    ('sdpa', None)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformer_lens.model_bridge.generalized_components import (
    PositionEmbeddingsAttentionBridge,
)
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from vlm_lens.engine.compat import attn_implementation, has_hooks, only_lens_forward_hooks
from vlm_lens.engine.score_mask import BlockedEdges, blocked_edges, causal_allowed, without_blocked

PREFIX = "vlm_lens:"
"""Prefix of the implementation names vlm_lens registers (``"vlm_lens:sdpa"``...)."""

TESTED_ATTENTION_MODULES: frozenset[str] = frozenset(
    {
        "LlamaAttention",
        "MistralAttention",
        "Qwen2Attention",
        "ChameleonAttention",
        "Emu3Attention",
        "Gemma3Attention",
        "Qwen2VLAttention",
        "Qwen2_5_VLAttention",
        "GemmaAttention",
        "Qwen3VLTextAttention",
    }
)
"""HF attention classes the fast path is tested on (every family and variant of the contract
suite). Add a class here once its family passes the suite. ``Gemma2Attention`` (PaliGemma 2)
is not here: HF runs Gemma 2 eager only (no SDPA with soft-capping), so its fast path is never
exercised and its layers always run TransformerLens' reconstruction, which is HF eager."""

EAGER_HOOKS: tuple[str, ...] = ("hook_attn_scores", "hook_pattern")
"""Attention hook points whose hooks make a layer run TransformerLens' reconstruction."""

RECONSTRUCTION_ONLY_HOOKS: tuple[str, ...] = ("hook_q_normed", "hook_k_normed")
"""Hook points only TransformerLens' reconstruction fires; a hook on one makes the layer use it."""

_RUNTIME_EAGER_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_attn_in")
_NOT_PASSED_ON = ("output_attentions", "use_cache")
_warned: set[str] = set()


@dataclass(frozen=True)
class _Call:
    """The decoder attention call in progress: whose module, its bridge, cache and masks."""

    hf_attn: nn.Module
    bridge: DispatchingAttention
    cache: Any
    masks: list[BlockedEdges] | None


_ACTIVE: ContextVar[_Call | None] = ContextVar("vlm_lens_attention_call", default=None)


def hooked_name(base: str) -> str | None:
    """The registered name under which the decoder runs `base` through `dispatch`
    (``"vlm_lens:sdpa"``), registering it on first use; ``None`` for ``"eager"`` (every layer
    then runs TransformerLens' reconstruction, which is HF eager) and for an implementation
    without a mask function to mirror.

    Example:
        >>> hooked_name("sdpa"), hooked_name("eager")
        ('vlm_lens:sdpa', None)
    """
    base = base_name(base)
    if base == "eager" or base not in ALL_ATTENTION_FUNCTIONS:
        return None
    if base not in ALL_MASK_ATTENTION_FUNCTIONS:
        return None
    name = PREFIX + base
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _dispatcher(base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


def base_name(name: str) -> str:
    """The implementation a (possibly vlm_lens-registered) name stands for.

    Example:
        >>> base_name("vlm_lens:sdpa"), base_name("eager")
        ('sdpa', 'eager')
    """
    return name[len(PREFIX) :] if name.startswith(PREFIX) else name


def _dispatcher(base: str) -> Callable[..., tuple[torch.Tensor, Any]]:
    def attention(module: nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        return dispatch(module, *args, base=base, **kwargs)

    attention.__name__ = f"vlm_lens_{base}_attention"
    return attention


def dispatch(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    base: str,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """The attention function registered as ``"vlm_lens:<base>"``.

    For the module of the `DispatchingAttention` call in progress: ``hook_rot_q`` on the
    rotated queries, ``hook_rot_k`` on the new rotated keys, the KV cache update with the
    hooked keys, the blocked edges of mask-only knockout hooks removed from the mask, then
    the base implementation. Any other module goes straight to the base implementation.
    """
    function = ALL_ATTENTION_FUNCTIONS[base]
    call = _ACTIVE.get()
    if call is None or call.hf_attn is not module:
        return function(module, query, key, value, attention_mask, **kwargs)
    bridge = call.bridge
    query = bridge.hook_rot_q(query)
    key = bridge.hook_rot_k(key)
    if call.cache is not None:
        key, value = call.cache.update(key, value, module.layer_idx)
    if call.masks:
        q_len, k_len = query.shape[-2], key.shape[-2]
        allowed = (
            causal_allowed(q_len, k_len, query.device)
            if attention_mask is None
            else attention_mask[..., :k_len]
        )
        shape = (query.shape[0], query.shape[1], q_len, k_len)
        attention_mask = without_blocked(
            allowed, call.masks, shape, str(bridge.hook_attn_scores.name)
        )
    passed = {k: v for k, v in kwargs.items() if k not in _NOT_PASSED_ON}
    return function(module, query, key, value, attention_mask, **passed)


class DispatchingAttention(PositionEmbeddingsAttentionBridge):
    """A ``PositionEmbeddingsAttentionBridge`` that runs HF's attention module when nothing
    needs TransformerLens' eager reconstruction (see the module docstring).

    Built by `vlm_lens.engine.components` in place of the plain bridge component; its hooks and
    TransformerLens behaviour are the parent's.
    """

    unsupported: str | None = None
    """Why this layer never takes the fast path (an untested HF class), or ``None``."""

    def set_original_component(self, component: nn.Module) -> None:
        """Bind the HF module (TransformerLens' own binding) and check the allow-list."""
        super().set_original_component(component)
        name = type(component).__name__
        if name not in TESTED_ATTENTION_MODULES:
            self.unsupported = (
                f"{name} is not among the attention classes vlm_lens' fast path is tested on "
                f"({', '.join(sorted(TESTED_ATTENTION_MODULES))})"
            )
            if name not in _warned:
                _warned.add(name)
                warnings.warn(
                    f"{self.unsupported}; its layers run TransformerLens' eager reconstruction "
                    "(exact, slower at long prompts). Add it to "
                    "vlm_lens.engine.attention.TESTED_ATTENTION_MODULES once its family passes "
                    "the contract suite.",
                    stacklevel=2,
                )

    def attention_implementation(self) -> str:
        """The implementation the HF model runs here (``"sdpa"``, ``"eager"``...)."""
        config = getattr(self.original_component, "config", None)
        name = attn_implementation(config) if config is not None else None
        return base_name(name or "eager")

    def reconstruction_reason(self, **kwargs: Any) -> str | None:
        """Why this call must run TransformerLens' reconstruction, or ``None`` for HF's code.

        Example:
            >>> model.bridge.blocks[0].attn.reconstruction_reason()  # doctest: +SKIP
            None
        """
        if self.unsupported is not None:
            return self.unsupported
        config = getattr(self.original_component, "config", None)
        if config is None or not str(attn_implementation(config) or "").startswith(PREFIX):
            return f"the implementation is {self.attention_implementation()!r}"
        if has_hooks(self.hook_pattern):
            return "a hook on hook_pattern"
        if has_hooks(self.hook_attn_scores) and not (
            self.attention_implementation() == "sdpa"
            and self.score_masks() is not None
            and _boolean_or_none(kwargs.get("attention_mask"))
        ):
            return "a hook on hook_attn_scores"
        for name in RECONSTRUCTION_ONLY_HOOKS:
            point = getattr(self, name, None)
            if point is not None and has_hooks(point):
                return f"a hook on {name}"
        for flag in _RUNTIME_EAGER_FLAGS:
            if bool(getattr(self.config, flag, False)):
                return f"cfg.{flag}"
        return None

    def needs_eager(self, **kwargs: Any) -> bool:
        """Whether this call runs TransformerLens' reconstruction (`reconstruction_reason`)."""
        return self.reconstruction_reason(**kwargs) is not None

    def score_masks(self) -> list[BlockedEdges] | None:
        """The blocked edges of the hooks on ``hook_attn_scores`` when every one is a mask-only
        knockout hook (`vlm_lens.engine.score_mask`), else ``None``."""
        functions = only_lens_forward_hooks(self.hook_attn_scores)
        if functions is None:
            return None
        edges = [blocked_edges(f) if f is not None else None for f in functions]
        return None if any(e is None for e in edges) else [e for e in edges if e is not None]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """TransformerLens' reconstruction when `needs_eager`, else the HF module's forward."""
        if self.needs_eager(**kwargs):
            return super().forward(*args, **kwargs)
        hf_attn: Any = self.original_component
        if "hidden_states" in kwargs:
            hidden_states = kwargs.pop("hidden_states")
        else:
            hidden_states, args = args[0], args[1:]
        hidden_states = self.hook_in(hidden_states)
        position_embeddings = kwargs.pop("position_embeddings", None)
        if isinstance(position_embeddings, tuple) and len(position_embeddings) == 2:
            position_embeddings = (
                self.hook_cos(position_embeddings[0]),
                self.hook_sin(position_embeddings[1]),
            )
        # the cache is updated in `dispatch`, after hook_rot_k, as TransformerLens does
        cache = kwargs.pop("past_key_values", None)
        if cache is None:
            cache = kwargs.pop("layer_past", None)
        masks = self.score_masks() if has_hooks(self.hook_attn_scores) else None
        token = _ACTIVE.set(_Call(hf_attn, self, cache, masks))
        try:
            out, weights = hf_attn(
                hidden_states, *args, position_embeddings=position_embeddings, **kwargs
            )
        finally:
            _ACTIVE.reset(token)
        return self.hook_out(out), weights


def _boolean_or_none(mask: Any) -> bool:
    """Whether an HF attention mask is one mask-only hooks can edit (SDPA's ``None``/bool)."""
    return mask is None or (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool)


def sliding_window(hf_attn: Any) -> int | None:
    """The sliding window HF applies in this attention module (per layer for Qwen2, from the
    config for Mistral), or ``None``."""
    if hasattr(hf_attn, "sliding_window"):
        return hf_attn.sliding_window
    return getattr(getattr(hf_attn, "config", None), "sliding_window", None)


def route_decoder(model: nn.Module, decoder_config: Any) -> None:
    """Point the decoder's attention at vlm_lens' registered implementation for the one it
    runs (``"sdpa"`` -> ``"vlm_lens:sdpa"``), through HF's ``set_attn_implementation``; every
    other sub-model keeps its own. Eager stays eager (`hooked_name`).

    Example:
        >>> from vlm_lens import HookedVLM
        >>> from vlm_lens.testing import build_tiny
        >>> tiny = build_tiny("llava")
        >>> model = HookedVLM.from_hf(tiny.model, tiny.processor).set_attn_implementation("sdpa")
        >>> decoder_config = model.bridge.blocks[0].attn.original_component.config
        >>> route_decoder(model.hf_model, decoder_config)
        >>> model.attn_implementation
        'sdpa'
    """
    current = base_name(attn_implementation(decoder_config) or "eager")
    wanted = hooked_name(current) or current
    if wanted == current != "eager" and current not in _warned:
        _warned.add(current)
        warnings.warn(
            f"attention implementation {current!r} has no mask function registered with "
            "transformers' AttentionMaskInterface, so vlm_lens cannot run it through its fast "
            "path; the decoder layers run TransformerLens' eager reconstruction (exact HF eager, "
            f"not HF's {current!r}). Use 'sdpa' or 'eager'.",
            stacklevel=2,
        )
    if attn_implementation(decoder_config) == wanted:
        return
    model.set_attn_implementation(_only(model.config, decoder_config, wanted))  # type: ignore[operator]


def _only(config: Any, target: Any, value: str) -> dict[str, Any]:
    """The nested ``set_attn_implementation`` dict that gives `target` (a config in `config`'s
    sub-config tree) `value` and every other config its current implementation."""
    out: dict[str, Any] = {"": value if config is target else attn_implementation(config)}
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None:
            out[key] = _only(sub, target, value)
    return out

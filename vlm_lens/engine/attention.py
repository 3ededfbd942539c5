"""The fast attention path: each decoder attention layer picks eager or the HF implementation.

TransformerLens 4.3's ``PositionEmbeddingsAttentionBridge`` always rebuilds attention eagerly
(``q @ k^T``, mask, fp32 softmax, ``@ v``) so that ``hook_attn_scores`` and ``hook_pattern`` can
fire, even when nothing reads them: at 1,000+ image tokens that is most of the forward's cost.
`DispatchingAttention` keeps the bridge's code for everything up to the attention kernel (the
q/k/v projections and their hooks, q/k norms, RoPE, ``hook_rot_q``/``hook_rot_k``, the KV cache)
and then, per call:

* runs the bridge's exact eager path when the layer *needs* it: a hook is attached to its
  ``hook_attn_scores`` or ``hook_pattern`` (forward or backward, however it got there:
  ``run_with_cache`` whose ``names_filter`` matches them, ``run_with_hooks``, ``hooks()``,
  ``generate(fwd_hooks=...)``, a zero-mode knockout, ``add_hook``), the model's implementation
  is ``"eager"``, or a TransformerLens option the fused call does not replicate is on
  (``use_attn_result``, ``use_split_qkv_input``, ``use_attn_in``). ``output_attentions`` is
  not a reason: TransformerLens' ``run_with_cache`` sets it on every call; patterns come from
  ``hook_pattern``. One exception: when every hook on ``hook_attn_scores`` is a mask-only
  knockout hook (`vlm_lens.engine.score_mask`, mask-mode knockouts) and nothing hooks the pattern,
  an SDPA layer stays fused and the blocked edges are removed from its boolean mask (the
  causal triangle when HF passes none);
* otherwise calls Hugging Face's own attention function for the model's
  ``config._attn_implementation`` (``ALL_ATTENTION_FUNCTIONS``: ``"sdpa"``, flash, flex...) with
  exactly the arguments the HF attention module passes, so logits are bit-identical to the HF
  model run with that implementation.

The HF mask the layer receives follows the implementation (``None`` or a boolean mask for SDPA,
an additive float mask for eager); the bridge's eager path turns either into the additive mask HF
eager uses (``0`` / ``finfo.min``; ``None`` becomes the causal triangle), so an eager layer inside
an SDPA model computes exactly what HF eager computes for that layer.

Private to the model layer: `vlm_lens.model` installs it; nothing else touches bridge internals.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge.generalized_components import (
    PositionEmbeddingsAttentionBridge,
)
from transformer_lens.utilities.hf_utils import get_rotary_pct_from_config
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from vlm_lens.engine.score_mask import BlockedEdges, blocked_edges, causal_allowed, without_blocked

EAGER_HOOKS: tuple[str, ...] = ("hook_attn_scores", "hook_pattern")
"""Attention hook points whose presence makes a layer run the eager path."""

_RUNTIME_EAGER_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_attn_in")
_NOT_PASSED_ON = ("past_key_values", "layer_past", "output_attentions", "use_cache")


def has_hooks(hook: HookPoint) -> bool:
    """Whether any forward or backward hook is registered on `hook` (by any route)."""
    return bool(
        hook._forward_hooks
        or hook._forward_pre_hooks
        or hook._backward_hooks
        or hook._backward_pre_hooks
    )


class DispatchingAttention(PositionEmbeddingsAttentionBridge):
    """A ``PositionEmbeddingsAttentionBridge`` that skips the eager pattern when nothing needs it.

    Installed on an existing bridge component by `install` (its class is swapped; state and
    hooks stay). See the module docstring for when each path runs.
    """

    def attention_implementation(self) -> str:
        """The implementation the HF model would use here (``config._attn_implementation``)."""
        config = getattr(self.original_component, "config", None)
        return str(getattr(config, "_attn_implementation", None) or "eager")

    def needs_eager(self, **kwargs: Any) -> bool:
        """Whether this call must run the bridge's eager path (see the module docstring)."""
        implementation = self.attention_implementation()
        if implementation == "eager" or has_hooks(self.hook_pattern):
            return True
        if has_hooks(self.hook_attn_scores) and not (
            implementation == "sdpa"
            and self.score_masks() is not None
            and _boolean_or_none(kwargs.get("attention_mask"))
        ):
            return True
        return any(bool(getattr(self.config, flag, False)) for flag in _RUNTIME_EAGER_FLAGS)

    def score_masks(self) -> list[BlockedEdges] | None:
        """The blocked edges of the hooks on ``hook_attn_scores`` when every one is a
        mask-only knockout hook (`vlm_lens.engine.score_mask`), else ``None``."""
        hook = self.hook_attn_scores
        handles = list(hook.fwd_hooks)
        extra = hook._forward_pre_hooks or hook._backward_hooks or hook._backward_pre_hooks
        if extra or len(handles) != len(hook._forward_hooks):
            return None
        edges = [blocked_edges(h.user_hook) if h.user_hook else None for h in handles]
        return None if any(e is None for e in edges) else edges  # type: ignore[return-value]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Eager (the bridge's own forward) when `needs_eager`, else the fused HF kernel."""
        if self.needs_eager(**kwargs):
            return super().forward(*args, **kwargs)
        return self._fused_forward(*args, **kwargs)

    def _fused_forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        # Mirrors PositionEmbeddingsAttentionBridge.forward up to the attention scores (the
        # same ops in the same order, so q/k/v are bit-identical), then does what the HF
        # attention module does: attention_interface(self, q, k, v, mask, dropout, scaling).
        hf_attn: Any = self.original_component
        if "hidden_states" in kwargs:
            hidden_states = kwargs.pop("hidden_states")
        else:
            hidden_states, args = args[0], args[1:]
        position_embeddings = kwargs.pop("position_embeddings", None)
        attention_mask = kwargs.pop("attention_mask", None)

        hidden_states = self.hook_in(hidden_states)
        input_shape = hidden_states.shape[:-1]
        head_dim = hf_attn.head_dim
        hidden_shape = (*input_shape, -1, head_dim)

        query = self.q(hidden_states)
        key = self.k(hidden_states)
        value = self.v(hidden_states)

        has_q_norm = "q_norm" in self.submodules
        has_k_norm = "k_norm" in self.submodules
        if has_q_norm and self._qk_norm_phase == "pre_reshape":
            norm = self._apply_pre_reshape_qk_norm
            query = norm(query, self.q_norm, self.hook_q_normed, head_dim)
            if has_k_norm:
                key = norm(key, self.k_norm, self.hook_k_normed, head_dim)

        query = query.view(hidden_shape).transpose(1, 2)
        key = key.view(hidden_shape).transpose(1, 2)
        value = value.view(hidden_shape).transpose(1, 2)

        if has_q_norm and self._qk_norm_phase == "post_reshape":
            if self._qk_norm_per_head:
                query = self.hook_q_normed(self.q_norm(query.transpose(1, 2)).transpose(1, 2))
                if has_k_norm:
                    key = self.hook_k_normed(self.k_norm(key.transpose(1, 2)).transpose(1, 2))
            else:
                query = self.hook_q_normed(self.q_norm(query))
                if has_k_norm:
                    key = self.hook_k_normed(self.k_norm(key))

        if position_embeddings is not None:
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            cos, sin = self._apply_position_embedding_hooks(position_embeddings)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if hasattr(self, "hook_rot_q"):
            query = self.hook_rot_q(query)
        if hasattr(self, "hook_rot_k"):
            key = self.hook_rot_k(key)

        key, value = self._update_kv_cache(key, value, **kwargs)

        masks = self.score_masks() if has_hooks(self.hook_attn_scores) else None
        if masks:  # mask-only knockout hooks: their edges leave the boolean mask
            q_len, k_len = query.shape[-2], key.shape[-2]
            allowed = (
                causal_allowed(q_len, k_len, query.device)
                if attention_mask is None
                else attention_mask[..., :k_len]
            )
            shape = (query.shape[0], query.shape[1], q_len, k_len)
            attention_mask = without_blocked(allowed, masks, shape, str(self.hook_attn_scores.name))

        implementation = self.attention_implementation()
        attention_fn = ALL_ATTENTION_FUNCTIONS[implementation]
        extra = {k: v for k, v in kwargs.items() if k not in _NOT_PASSED_ON}
        window = sliding_window(hf_attn)
        if window is not None:
            extra["sliding_window"] = window
        dropout = 0.0 if not self.training else float(getattr(hf_attn, "attention_dropout", 0.0))
        attn_output, attn_weights = attention_fn(
            hf_attn,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=hf_attn.scaling,
            **extra,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self._pre_output_projection(attn_output)
        attn_output = self.o(attn_output)
        attn_output = self.hook_out(attn_output)
        return attn_output, attn_weights


def _boolean_or_none(mask: Any) -> bool:
    """Whether an HF attention mask is one mask-only hooks can edit (SDPA's ``None``/bool)."""
    return mask is None or (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool)


def sliding_window(hf_attn: Any) -> int | None:
    """The sliding window HF applies in this attention module (per layer for Qwen2, from the
    config for Mistral), or ``None``."""
    if hasattr(hf_attn, "sliding_window"):
        return hf_attn.sliding_window
    return getattr(getattr(hf_attn, "config", None), "sliding_window", None)


def fused_path_supported(attn: PositionEmbeddingsAttentionBridge) -> bool:
    """Whether `DispatchingAttention`'s fused call reproduces this layer's bridge computation.

    False for the options TransformerLens' attention handles that the fused call does not
    replicate (gated or scaled projections, clipping, softcapping, sinks, non-standard RoPE,
    norms after RoPE, extra gates); such layers keep the bridge's eager forward.
    """
    hf_attn: Any = attn.original_component
    config = attn.config
    hf_config = getattr(hf_attn, "config", None)
    rope = getattr(hf_config, "rope_parameters", None)
    unsupported = (
        getattr(config, "gated_q_proj", False),
        getattr(config, "qk_norm_after_rope", False),
        getattr(config, "rotary_interleaved_cos_sin", False),
        getattr(config, "rotary_adjacent_pairs", False),
        getattr(hf_attn, "key_multiplier", None) is not None,
        getattr(hf_config, "clip_qkv", None) is not None,
        getattr(hf_attn, "attn_logit_softcapping", None) is not None,
        getattr(hf_attn, "sinks", None) is not None,
        isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None,
        get_rotary_pct_from_config(config) != 1.0,
        "gate" in attn.submodules,
        not hasattr(hf_attn, "scaling") or not hasattr(hf_attn, "head_dim"),
    )
    return not any(unsupported)


def install(modules: list[nn.Module]) -> int:
    """Swap every plain ``PositionEmbeddingsAttentionBridge`` in `modules` to
    `DispatchingAttention` when the fused path supports it; returns how many were swapped."""
    swapped = 0
    for module in modules:
        if type(module) is PositionEmbeddingsAttentionBridge and fused_path_supported(module):
            module.__class__ = DispatchingAttention
            swapped += 1
    return swapped

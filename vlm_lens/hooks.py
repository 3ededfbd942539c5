"""Typed hook names for the language model of a VLM, and the multimodal hook points.

Every helper returns a TransformerLens hook name; the shape of the tensor the hook receives is in
its docstring (``batch``, ``pos`` = sequence length, ``head``, ``d_head``, ``d_model``,
``d_mlp``, ``q``/``k`` = query/key positions). Names use TransformerLens' HookedTransformer
vocabulary (``blocks.3.hook_resid_pre``), which the bridge resolves for every family to its
canonical hook point (``blocks.3.hook_in``; for Chameleon with ``swin_norm`` the attention output
is ``blocks.3.ln1_post.hook_out``), so one name means the same tensor in every model. The
activation cache stores both spellings.

Every name here and every filter built by `lm_filter` starts with ``blocks.`` or names a
multimodal point, so none can match a vision-tower hook (``vision_encoder.*``) by accident.

Example:
    >>> from vlm_lens import hooks
    >>> hooks.resid_pre(3), hooks.pattern(0)
    ('blocks.3.hook_resid_pre', 'blocks.0.attn.hook_pattern')
    >>> f = hooks.lm_filter("hook_pattern")
    >>> f("blocks.1.attn.hook_pattern"), f("vision_encoder.encoder_layers.1.attn.hook_pattern")
    (True, False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

IMAGE_EMBEDS = "hook_image_embeds"
"""Image features as they enter the decoder: ``[batch, n_image_tokens, d_model]``.

VQ-token embeddings for Chameleon/Emu3 (Emu3's end-of-row embeddings included, in span order),
projector output for LLaVA and Janus. Sequences with fewer image tokens than the longest are
zero-padded at the end; edits to the padding are ignored. Editing it changes the model output.
"""

DEEPSTACK_EMBEDS = "hook_deepstack_embeds"
"""Prefix of the deepstack points (`deepstack_embeds`); only families with deepstack have them."""

INPUTS_EMBEDS = "hook_inputs_embeds"
"""The merged decoder input (text embeddings with image features scattered in):
``[batch, pos, d_model]``. Same hook point as ``blocks.0.hook_resid_pre``."""

EMBED = "hook_embed"
"""TransformerLens' token embedding ``[batch, pos, d_model]``: at image positions it holds the
*placeholder* embedding, not the image. Use `INPUTS_EMBEDS` for what the decoder reads."""

FINAL_NORM = "ln_final.hook_out"
"""Final norm output ``[batch, pos, d_model]`` (input of the unembedding)."""

UNEMBED = "unembed.hook_out"
"""Logits ``[batch, pos, d_vocab]`` (before Chameleon's image-column mask)."""

MULTIMODAL_HOOKS: tuple[str, ...] = (IMAGE_EMBEDS, INPUTS_EMBEDS)
"""Hook points vlm_lens adds to TransformerLens' bridge."""


def _checked(layer: int) -> int:
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise ValueError(f"layer must be a non-negative int, got {layer!r}")
    return layer


def _block(layer: int, name: str) -> str:
    return f"blocks.{_checked(layer)}.{name}"


def deepstack_embeds(level: int) -> str:
    """Deepstack features of `level` (Qwen3-VL): ``[batch, n_image_tokens, d_model]``, grouped
    and zero-padded as `IMAGE_EMBEDS`. The decoder adds them at the image positions after layer
    `level` (``resid_pre(level + 1) = resid_post(level) + deepstack``); editing or zeroing the
    point changes that add. Registered only for families with deepstack (``model.hook_dict``).

    Example:
        >>> deepstack_embeds(0)
        'hook_deepstack_embeds.0'
    """
    return f"{DEEPSTACK_EMBEDS}.{_checked(level)}"


def resid_pre(layer: int) -> str:
    """Residual stream entering block `layer`: ``[batch, pos, d_model]``."""
    return _block(layer, "hook_resid_pre")


def resid_mid(layer: int) -> str:
    """Residual after the attention sub-block of `layer`: ``[batch, pos, d_model]``."""
    return _block(layer, "hook_resid_mid")


def resid_post(layer: int) -> str:
    """Residual leaving block `layer`: ``[batch, pos, d_model]``."""
    return _block(layer, "hook_resid_post")


def attn_out(layer: int) -> str:
    """Attention sub-block output added to the residual: ``[batch, pos, d_model]``."""
    return _block(layer, "hook_attn_out")


def mlp_out(layer: int) -> str:
    """MLP sub-block output added to the residual: ``[batch, pos, d_model]``."""
    return _block(layer, "hook_mlp_out")


def attn_in(layer: int) -> str:
    """Input of the attention module (after ``ln1``; the raw residual with ``swin_norm``):
    ``[batch, pos, d_model]``. This is the paper's "attention input" patching site."""
    return _block(layer, "attn.hook_in")


def q(layer: int) -> str:
    """Queries before RoPE: ``[batch, pos, head, d_head]``."""
    return _block(layer, "attn.hook_q")


def k(layer: int) -> str:
    """Keys before RoPE: ``[batch, pos, kv_head, d_head]`` (``kv_head`` < ``head`` with GQA)."""
    return _block(layer, "attn.hook_k")


def v(layer: int) -> str:
    """Values: ``[batch, pos, kv_head, d_head]``."""
    return _block(layer, "attn.hook_v")


def rot_q(layer: int) -> str:
    """Queries after RoPE: ``[batch, pos, head, d_head]``."""
    return _block(layer, "attn.hook_rot_q")


def rot_k(layer: int) -> str:
    """Keys after RoPE: ``[batch, pos, kv_head, d_head]``."""
    return _block(layer, "attn.hook_rot_k")


def z(layer: int) -> str:
    """Per-head attention output before ``W_O``: ``[batch, pos, head, d_head]``."""
    return _block(layer, "attn.hook_z")


def attn_scores(layer: int) -> str:
    """Pre-softmax scores after the causal mask: ``[batch, head, q, k]``. Editable (knockout)."""
    return _block(layer, "attn.hook_attn_scores")


def pattern(layer: int) -> str:
    """Post-softmax attention pattern: ``[batch, head, q, k]``."""
    return _block(layer, "attn.hook_pattern")


def mlp_pre(layer: int) -> str:
    """MLP gate pre-activation: ``[batch, pos, d_mlp]``."""
    return _block(layer, "mlp.hook_pre")


def mlp_post(layer: int) -> str:
    """MLP hidden activation (input of the down projection): ``[batch, pos, d_mlp]``."""
    return _block(layer, "mlp.hook_post")


LAYER_HOOKS: dict[str, Callable[[int], str]] = {
    "resid_pre": resid_pre,
    "resid_mid": resid_mid,
    "resid_post": resid_post,
    "attn_out": attn_out,
    "mlp_out": mlp_out,
    "attn_in": attn_in,
    "q": q,
    "k": k,
    "v": v,
    "rot_q": rot_q,
    "rot_k": rot_k,
    "z": z,
    "attn_scores": attn_scores,
    "pattern": pattern,
    "mlp_pre": mlp_pre,
    "mlp_post": mlp_post,
}
"""Short name -> helper, for building names programmatically."""


def layer_hook(kind: str, layer: int) -> str:
    """Hook name from a short kind and a layer, e.g. ``layer_hook("pattern", 2)``.

    Raises:
        ValueError: for an unknown kind, listing the known ones.
    """
    try:
        return LAYER_HOOKS[kind](layer)
    except KeyError:
        raise ValueError(f"unknown hook kind {kind!r}; known: {', '.join(LAYER_HOOKS)}") from None


def all_layers(kind: str, n_layers: int) -> list[str]:
    """The hook of `kind` at every layer, e.g. ``all_layers("resid_post", model.cfg.n_layers)``."""
    return [layer_hook(kind, layer) for layer in range(n_layers)]


def is_language_model_hook(name: str) -> bool:
    """Whether `name` is a hook of the language model (a block, the final norm or unembedding,
    the embeddings, or a vlm_lens multimodal point, deepstack ones included), never of the
    vision tower."""
    prefixes = ("blocks.", "ln_final.", "unembed.", "embed.", f"{DEEPSTACK_EMBEDS}.")
    return name.startswith(prefixes) or name in (
        *MULTIMODAL_HOOKS,
        EMBED,
    )


def lm_filter(*suffixes: str, layers: Iterable[int] | None = None) -> Callable[[str], bool]:
    """A ``names_filter`` for language-model block hooks ending in one of `suffixes`.

    Args:
        suffixes: name endings such as ``"hook_resid_post"`` or ``"attn.hook_pattern"``; none
            means every block hook.
        layers: restrict to these layers.

    Returns:
        A predicate on hook names, anchored at ``blocks.`` so that vision-tower hooks never match.

    Example:
        >>> lm_filter("hook_resid_post", layers=[1])("blocks.1.hook_resid_post")
        True
    """
    allowed = None if layers is None else {int(layer) for layer in layers}

    def names_filter(name: str) -> bool:
        if not name.startswith("blocks."):
            return False
        if allowed is not None:
            layer = name.split(".", 2)[1]
            if not layer.isdigit() or int(layer) not in allowed:
                return False
        return not suffixes or name.endswith(suffixes)

    return names_filter

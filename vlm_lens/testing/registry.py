"""The registry of tiny test variants: one entry per (family, configuration) the contract suite
must pass.

``tests/contract/`` is parametrised over :func:`tiny_variants`; a family registered with
``vlm_lens.adapters.register_family`` but without a tiny variant here fails the contract suite
loudly (``tests/contract/test_registry.py``). Each entry names its builder (a function returning a
:class:`~vlm_lens.testing.TinyVLM`), the keyword arguments it is called with, and an
:class:`ImageFrame`: what the family's *processor* writes around each image, in tokenizer strings,
from which the contract suite's brute-force role reference is derived (independently of the
adapter's ``TokenSpec``).

Example:
    >>> from vlm_lens.testing import tiny_variant, tiny_variants
    >>> [v.name for v in tiny_variants(family="janus")]
    ['janus-tied', 'janus-untied']
    >>> dict(tiny_variant("llava-qwen2").kwargs)
    {'text_backbone': 'qwen2'}
    >>> tiny_variant("chameleon").build().family
    'chameleon'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vlm_lens.testing.tiny_gemma import tiny_gemma3
from vlm_lens.testing.tiny_idefics3 import IDEFICS3_SIZES, tiny_idefics3, tiny_smolvlm
from vlm_lens.testing.tiny_internvl import tiny_internvl
from vlm_lens.testing.tiny_llava_next import (
    LLAVA_NEXT_SIZES,
    tiny_llava_next,
    tiny_llava_onevision,
)
from vlm_lens.testing.tiny_models import (
    TinyVLM,
    tiny_chameleon,
    tiny_emu3,
    tiny_janus,
    tiny_llava,
)
from vlm_lens.testing.tiny_paligemma import tiny_paligemma
from vlm_lens.testing.tiny_pixtral import PIXTRAL_PATCH, tiny_mistral3, tiny_pixtral
from vlm_lens.testing.tiny_qwen_vl import tiny_qwen2_5_vl, tiny_qwen2_vl, tiny_qwen3_vl

__all__ = [
    "GRID_TEXT",
    "TINY_FAMILIES",
    "ImageFrame",
    "TinyVariant",
    "build_tiny",
    "register_tiny",
    "tiny_families",
    "tiny_variant",
    "tiny_variants",
]

GRID_TEXT = "{grid}"
"""Stands, in :attr:`ImageFrame.opening`, for plain text ``"{rows}*{cols}"`` (Emu3's header)."""


@dataclass(frozen=True)
class ImageFrame:
    """What a processor writes around the placeholder span of one image (token strings).

    Attributes:
        opening: Tokens right before the span, in order (roles ``image_start``); the last one
            touches the span. :data:`GRID_TEXT` stands for the plain-text grid ``"R*C"``.
        closing: Tokens right after the span, in order. The first is the gate (roles ``gate``
            and ``image_end``), the rest are ``image_end``. Empty: the gate is the first text
            token after the span (roles ``gate`` and ``text``), and adjacent images are split
            by their fixed placeholder count.
        grid_factor: If set, an ``H x W`` image gives ``H // f`` rows of ``W // f`` codes, and
            each row of the span ends with one more placeholder (role ``image_row_end``).
        row_end: With `grid_factor`: the token that ends each row *but the last* instead of a
            placeholder (role ``image_row_end``, inside the span); the last row is closed by
            the first `closing` token (Pixtral's ``[IMG_BREAK]`` and ``[IMG_END]``).
        newline_rows: Images differ in length and some placeholders are row ends (role
            ``image_row_end``): those whose image feature is the model's ``image_newline``
            (LLaVA-Next, OneVision). The reference reads them from the HF model's features.
        tile_open: Tiled images (Idefics3, SmolVLM): the token before each tile's marker
            (``<row_i_col_j>`` from the image processor's grid, `global_tile` for the last
            tile) and after the last tile (the gate and ``image_end``). One span per image,
            from its first placeholder to its last; the tile headers are ``image_start``.
        global_tile: With `tile_open`: the marker of the global tile, the image's last.
        tile_row_end: With `tile_open`: the text after each row of tiles, and once more before
            the global tile (role ``image_row_end``).
        bos_after_image: The processor writes the tokenizer's BOS right after the last image of
            each prompt, not at its start (PaliGemma): with empty `closing`, that BOS is the
            last image's gate, with roles ``gate`` and ``bos``.
    """

    opening: tuple[str, ...] = ()
    closing: tuple[str, ...] = ()
    grid_factor: int | None = None
    row_end: str | None = None
    newline_rows: bool = False
    tile_open: str | None = None
    global_tile: str | None = None
    tile_row_end: str | None = None
    bos_after_image: bool = False


@dataclass(frozen=True)
class TinyVariant:
    """One registered tiny configuration of a family.

    Attributes:
        name: Test id, unique (``"llava-qwen2"``).
        family: The adapter family it exercises (``VLMAdapter.family``).
        builder: Returns a :class:`TinyVLM`; called as ``builder(**kwargs, seed=, dtype=)``.
        kwargs: Keyword arguments of this variant.
        frame: What the processor writes around each image (for the role reference).
        image_sizes: ``(height, width)`` of the sample images the role checks use, cycled;
            sizes that differ give different grids where the span depends on the image.
        primary: The family's primary variant: the one the costlier contract checks
            (interventions, prefix reuse, stacked passes) run on. One per family.
    """

    name: str
    family: str
    builder: Callable[..., TinyVLM] = field(repr=False)
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    frame: ImageFrame = field(default_factory=ImageFrame)
    image_sizes: tuple[tuple[int, int], ...] = ()
    primary: bool = False

    def build(self, **overrides: Any) -> TinyVLM:
        """Builds the tiny model, with ``overrides`` (``seed=``, ``dtype=``) on top of
        :attr:`kwargs`."""
        return self.builder(**{**self.kwargs, **overrides})


_VARIANTS: dict[str, TinyVariant] = {}


def register_tiny(
    name: str,
    builder: Callable[..., TinyVLM],
    *,
    family: str,
    frame: ImageFrame,
    kwargs: Mapping[str, Any] | None = None,
    image_sizes: tuple[tuple[int, int], ...] = (),
    primary: bool | None = None,
) -> TinyVariant:
    """Registers a tiny variant for the contract suite and returns it.

    Args:
        name: Unique test id.
        builder: Returns a :class:`TinyVLM` (random norm weights, eager attention,
            ``config.architectures`` set); must accept ``seed=`` and ``dtype=``.
        family: The adapter family it exercises.
        frame: What the processor writes around each image.
        kwargs: Builder keyword arguments of this variant.
        image_sizes: Sample image sizes for the role checks (default: the builder's own).
        primary: Whether the costlier checks run on it; default: the family's first variant.

    Raises:
        ValueError: If ``name`` is taken, or a second primary variant is given for ``family``.

    Example:
        >>> from vlm_lens.testing import ImageFrame, register_tiny, tiny_llava
        >>> from vlm_lens.testing.registry import _VARIANTS
        >>> v = register_tiny("doc-llava", tiny_llava, family="doc", frame=ImageFrame())
        >>> v.primary
        True
        >>> del _VARIANTS["doc-llava"]
    """
    if name in _VARIANTS:
        raise ValueError(f"tiny variant {name!r} is already registered")
    has_primary = any(v.primary for v in _VARIANTS.values() if v.family == family)
    if primary is None:
        primary = not has_primary
    elif primary and has_primary:
        raise ValueError(f"family {family!r} already has a primary tiny variant")
    variant = TinyVariant(
        name=name,
        family=family,
        builder=builder,
        kwargs=MappingProxyType(dict(kwargs or {})),
        frame=frame,
        image_sizes=tuple(image_sizes),
        primary=primary,
    )
    _VARIANTS[name] = variant
    return variant


def tiny_variants(
    *, family: str | None = None, primary: bool | None = None
) -> tuple[TinyVariant, ...]:
    """The registered variants in registration order, optionally of one family or only the
    primary ones (``primary=True``)."""
    return tuple(
        v
        for v in _VARIANTS.values()
        if (family is None or v.family == family) and (primary is None or v.primary == primary)
    )


def tiny_variant(name: str) -> TinyVariant:
    """The variant registered as ``name``.

    Raises:
        KeyError: naming the registered variants.
    """
    try:
        return _VARIANTS[name]
    except KeyError:
        raise KeyError(f"no tiny variant {name!r}; registered: {', '.join(_VARIANTS)}") from None


def tiny_families() -> tuple[str, ...]:
    """The families with a registered tiny variant, in registration order."""
    return tuple(dict.fromkeys(v.family for v in _VARIANTS.values()))


def build_tiny(family: str, **kwargs: Any) -> TinyVLM:
    """Builds the tiny model of ``family``: its primary registered variant.

    Args:
        family: A family with a registered variant (:func:`tiny_families`).
        **kwargs: On top of the variant's own keyword arguments (e.g. ``seed=``, ``dtype=``,
            ``swin_norm=`` for Chameleon, ``text_backbone=`` for LLaVA).

    Returns:
        The tiny model with its processor and tokenizer.

    Raises:
        ValueError: If ``family`` has no registered variant, naming those that have one.

    Example:
        >>> build_tiny("llava", text_backbone="qwen2").model.config.text_config.model_type
        'qwen2'
    """
    primary = tiny_variants(family=family, primary=True)
    if not primary:
        raise ValueError(
            f"unknown tiny VLM family {family!r}; expected one of {', '.join(tiny_families())}"
        )
    return primary[0].build(**kwargs)


# ------------------------------------------------------------------------------------------------
# The built-in families
# ------------------------------------------------------------------------------------------------

_CHAMELEON = ImageFrame(opening=("<racm3:break>",), closing=("<eoss>",))
_EMU3 = ImageFrame(
    opening=("<|image start|>", GRID_TEXT, "<|image token|>"),
    closing=("<|extra_201|>", "<|image end|>"),
    grid_factor=8,  # Emu3Processor's spatial factor
)
_JANUS = ImageFrame(opening=("<begin_of_image>",), closing=("<end_of_image>",))
_LLAVA = ImageFrame()

register_tiny("chameleon", tiny_chameleon, family="chameleon", frame=_CHAMELEON)
register_tiny(
    "chameleon-swin",
    tiny_chameleon,
    family="chameleon",
    frame=_CHAMELEON,
    kwargs={"swin_norm": True},
)
register_tiny(
    "emu3", tiny_emu3, family="emu3", frame=_EMU3, image_sizes=((16, 24), (24, 16), (16, 16))
)
register_tiny("janus-tied", tiny_janus, family="janus", frame=_JANUS)
register_tiny(
    "janus-untied",
    tiny_janus,
    family="janus",
    frame=_JANUS,
    kwargs={"tie_word_embeddings": False},
)
register_tiny("llava-llama", tiny_llava, family="llava", frame=_LLAVA)
for _backbone in ("mistral", "qwen2"):
    register_tiny(
        f"llava-{_backbone}",
        tiny_llava,
        family="llava",
        frame=_LLAVA,
        kwargs={"text_backbone": _backbone},
    )
# Pixtral/Mistral 3: one [IMG] per patch (x spatial merge), sizes that differ in both axes.
_PIXTRAL_SIZES = ((16, 24), (24, 16), (16, 16))
for _name, _builder, _merge in (("pixtral", tiny_pixtral, 1), ("mistral3", tiny_mistral3, 2)):
    register_tiny(
        _name,
        _builder,
        family=_name,
        frame=ImageFrame(
            closing=("[IMG_END]",), grid_factor=PIXTRAL_PATCH * _merge, row_end="[IMG_BREAK]"
        ),
        image_sizes=_PIXTRAL_SIZES,
    )

# Qwen-VL: <|vision_start|> + one <|image_pad|> per merged 2x2 patch group + <|vision_end|>.
_QWEN_VL = ImageFrame(opening=("<|vision_start|>",), closing=("<|vision_end|>",))
for _name, _builder in (
    ("qwen2_vl", tiny_qwen2_vl),
    ("qwen2_5_vl", tiny_qwen2_5_vl),
    ("qwen3_vl", tiny_qwen3_vl),
):
    register_tiny(
        _name, _builder, family=_name, frame=_QWEN_VL, image_sizes=((16, 24), (24, 16), (16, 16))
    )

# InternVL: one span per image, its tiles (2 + thumbnail, 1, 2 + thumbnail) back to back.
_INTERNVL = ImageFrame(opening=("<img>",), closing=("</img>",))
_INTERNVL_SIZES = ((16, 32), (16, 16), (32, 16))
register_tiny(
    "internvl-qwen2", tiny_internvl, family="internvl", frame=_INTERNVL, image_sizes=_INTERNVL_SIZES
)
register_tiny(
    "internvl-llama",
    tiny_internvl,
    family="internvl",
    frame=_INTERNVL,
    kwargs={"text_backbone": "llama"},
    image_sizes=_INTERNVL_SIZES,
)
# LLaVA-Next / OneVision: one span per image (base crop, then tile rows each ended by the
# image_newline placeholder), the gate the first text token; sizes give different tile grids.
register_tiny(
    "llava_next",
    tiny_llava_next,
    family="llava_next",
    frame=ImageFrame(newline_rows=True),
    image_sizes=LLAVA_NEXT_SIZES,
)
register_tiny(
    "llava_next-mistral",
    tiny_llava_next,
    family="llava_next",
    frame=ImageFrame(newline_rows=True),
    kwargs={"text_backbone": "mistral"},
    image_sizes=LLAVA_NEXT_SIZES,
)
register_tiny(
    "llava_onevision",
    tiny_llava_onevision,
    family="llava_onevision",
    frame=ImageFrame(newline_rows=True),
    image_sizes=LLAVA_NEXT_SIZES,
)

# Gemma 3: <start_of_image> soft tokens <end_of_image> (the gate), one fixed-size span per image.
register_tiny(
    "gemma3",
    tiny_gemma3,
    family="gemma3",
    frame=ImageFrame(opening=("<start_of_image>",), closing=("<end_of_image>",)),
)
# Idefics3 / SmolVLM: a grid of tiles and the global tile per image, in one span; the sizes
# give 2 x 2, 1 x 2 and 2 x 1 grids.
_IDEFICS3 = ImageFrame(
    closing=("<fake_token_around_image>",),
    tile_open="<fake_token_around_image>",
    global_tile="<global-img>",
    tile_row_end="\n",
)
for _name, _builder in (("idefics3", tiny_idefics3), ("smolvlm", tiny_smolvlm)):
    register_tiny(_name, _builder, family=_name, frame=_IDEFICS3, image_sizes=IDEFICS3_SIZES)
# PaliGemma: 16 <image> per image, no delimiters; <bos> after the last image is its gate.
_PALIGEMMA = ImageFrame(bos_after_image=True)
register_tiny("paligemma", tiny_paligemma, family="paligemma", frame=_PALIGEMMA)
register_tiny(
    "paligemma2",
    tiny_paligemma,
    family="paligemma",
    frame=_PALIGEMMA,
    kwargs={"text_backbone": "gemma2"},
)

TINY_FAMILIES: tuple[str, ...] = tiny_families()
"""The families vlm_lens registers a tiny variant for (accepted by :func:`build_tiny`)."""

"""Tiny, randomly initialised, fully offline Hugging Face VLMs for tests.

Every builder returns a :class:`TinyVLM`: a ``*ForConditionalGeneration`` model, the family's own
Processor class (with a PIL image processor, so torchvision is never needed) and an in-memory
byte-level BPE tokenizer. Nothing is downloaded; building all four families takes well under a
second once ``transformers`` is imported.

Shared text-model shape: hidden 32, 2 layers, 4 attention heads, 2 KV heads (GQA), FFN 64,
vocab = ``len(tokenizer)`` (about 260-280 tokens: 256 byte symbols plus specials and VQ codes).

Weights are deliberately *not* the HF init, so that parity tests can catch porting bugs: after
construction every language-model parameter (embeddings, attention, MLP, norms, ``lm_head``) and
the multimodal projector are re-drawn from a ``torch.Generator`` seeded with ``seed`` (Linear and
Embedding weights ~ N(0, 0.2^2), biases ~ N(0, 0.1^2), norm weights ~ 1 + 0.3 N(0, 1), norm
biases ~ N(0, 0.1^2)). Every norm layer outside the VQ models (vision-tower LayerNorms included)
gets random weights/biases as well. The rest (vision tower, VQ models, Janus' image-generation
heads) keeps the HF init drawn after ``torch.manual_seed(seed)``; the caller's global RNG state
is restored afterwards. The same seed gives bit-identical weights.

Token layout of the in-memory tokenizers: ids 0-255 are the byte-level symbols, the special
tokens follow from id 256 in the order listed in each builder, then the VQ code tokens
(Chameleon ``IMGIMG...Z``, Emu3 ``<|visual token NNNNNN|>``).

All four families load back with ``transformers.AutoModelForImageTextToText`` and
``transformers.AutoProcessor`` after :func:`save_tiny`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from torch import nn
from transformers import (
    BatchFeature,
    ChameleonConfig,
    ChameleonForConditionalGeneration,
    ChameleonProcessor,
    Emu3Config,
    Emu3ForConditionalGeneration,
    Emu3ImageProcessor,
    Emu3Processor,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)
from transformers.models.chameleon.image_processing_pil_chameleon import (
    ChameleonImageProcessorPil,
)
from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

__all__ = [
    "LLAVA_TEXT_BACKBONES",
    "TinyVLM",
    "sample_image",
    "save_tiny",
    "tiny_chameleon",
    "tiny_emu3",
    "tiny_janus",
    "tiny_llava",
]

LLAVA_TEXT_BACKBONES: tuple[str, ...] = ("llama", "mistral", "qwen2")
"""Values accepted by ``tiny_llava(text_backbone=...)``."""

HIDDEN = 32
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FFN = 64
MAX_POSITIONS = 512

LINEAR_STD = 0.2
BIAS_STD = 0.1
NORM_WEIGHT_STD = 0.3
NORM_BIAS_STD = 0.1


@dataclass(frozen=True)
class TinyVLM:
    """A tiny VLM together with its processor and tokenizer.

    Attributes:
        model: The ``*ForConditionalGeneration`` model, in ``.eval()`` mode with eager attention.
        processor: The family's own Processor (``ChameleonProcessor``, ``Emu3Processor``,
            ``JanusProcessor`` or ``LlavaProcessor``) wrapping a PIL image processor.
        tokenizer: The in-memory tokenizer; the same object as ``processor.tokenizer``.
        family: The adapter family (``VLMAdapter.family``) it is a model of.
        image_size: ``(height, width)`` a sample image should have (see :func:`sample_image`).
        prompt: A sample prompt with exactly one image placeholder, in the family's chat style.
        per_prompt_images: Whether the processor takes one list of images per prompt (Gemma 3;
            the adapter's ``processor_images`` seam).
    """

    model: PreTrainedModel = field(repr=False)
    processor: ProcessorMixin = field(repr=False)
    tokenizer: PreTrainedTokenizerFast = field(repr=False)
    family: str
    image_size: tuple[int, int]
    prompt: str
    per_prompt_images: bool = False

    def sample_inputs(self, seed: int = 0, batch_size: int = 1) -> BatchFeature:
        """Runs the processor on :attr:`prompt` and :func:`sample_image` (one image per prompt).

        Floating-point tensors (``pixel_values``) are cast to the model's dtype, so the result can
        be fed straight to ``model(**inputs)`` for bf16 models too.

        Args:
            seed: Seed of the first sample image; prompt ``i`` of the batch gets ``seed + i``.
            batch_size: Number of (identical-text) prompts in the batch.

        Returns:
            The processor output with ``return_tensors="pt"``.
        """
        images = [sample_image(seed + i, self.image_size) for i in range(batch_size)]
        text = [self.prompt] * batch_size
        given: Any = [[img] for img in images] if self.per_prompt_images else images
        inputs = self.processor(images=given, text=text, return_tensors="pt")
        return inputs.to(self.model.dtype)


def sample_image(seed: int = 0, size: tuple[int, int] = (16, 16)) -> Image.Image:
    """Returns a deterministic random RGB image.

    Args:
        seed: Seed of the NumPy generator that draws the pixels.
        size: ``(height, width)`` of the image. Note that PIL's own ``Image.size`` is
            ``(width, height)``.

    Returns:
        An RGB ``PIL.Image.Image`` with uniformly random pixel values.
    """
    height, width = size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def save_tiny(tiny: TinyVLM, path: str | os.PathLike[str]) -> Path:
    """Saves the model and processor (tokenizer included) of ``tiny`` to a directory.

    The directory reloads offline with ``AutoModelForImageTextToText.from_pretrained(path)`` and
    ``AutoProcessor.from_pretrained(path)`` for every family. Note that ``from_pretrained``
    defaults to sdpa attention; pass ``attn_implementation="eager"`` to keep eager attention.

    Args:
        tiny: The tiny model to save.
        path: Target directory; created if it does not exist.

    Returns:
        The directory as a ``Path``.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tiny.model.save_pretrained(out)
    tiny.processor.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------


def _make_tokenizer(
    specials: Sequence[str],
    extra_tokens: Sequence[str] = (),
    add_bos: str | None = None,
    **named_tokens: str,
) -> PreTrainedTokenizerFast:
    """Builds a byte-level BPE tokenizer (no merges) with special tokens.

    Any text encodes without ``<unk>`` (one token per byte), and special tokens are never split.

    Args:
        specials: Special tokens; they get ids 256, 257, ... in order.
        extra_tokens: Further special tokens (e.g. VQ code tokens) that follow ``specials``.
        add_bos: If given, this token is prepended to every encoded sequence (Llama style).
        **named_tokens: Forwarded to ``PreTrainedTokenizerFast`` (``bos_token=``, ``pad_token=``,
            and model-specific names such as ``image_token=`` that the processors read).

    Returns:
        The tokenizer; ``padding_side`` is right.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    all_specials = [*specials, *extra_tokens]
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in all_specials]
    )
    if add_bos is not None:
        bos_id = backend.token_to_id(add_bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{add_bos} $A",
            pair=f"{add_bos} $A {add_bos} $B",
            special_tokens=[(add_bos, bos_id)],
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **named_tokens)
    for i, token in enumerate(all_specials):
        if tokenizer.convert_tokens_to_ids(token) != len(alphabet) + i:
            raise RuntimeError(f"unexpected id for special token {token!r}")
    return tokenizer


def _text_config(tokenizer: PreTrainedTokenizerFast, **overrides: Any) -> dict[str, Any]:
    """Returns the shared tiny text-model config kwargs, with token ids from ``tokenizer``."""
    config: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config.update(overrides)
    return config


# ------------------------------------------------------------------------------------------------
# Weight randomisation
# ------------------------------------------------------------------------------------------------


def _is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (LayerNorm, RMSNorm, GroupNorm, ...)."""
    return "norm" in type(module).__name__.lower()


def _owned_parameters(modules: Iterable[nn.Module]) -> list[tuple[nn.Module, str, nn.Parameter]]:
    """Lists ``(owner module, local name, parameter)`` in a deterministic order, without repeats.

    Tied parameters (e.g. Janus' ``lm_head.weight`` and ``embed_tokens.weight``) appear once.
    """
    seen: set[int] = set()
    out: list[tuple[nn.Module, str, nn.Parameter]] = []
    for root in modules:
        for module in root.modules():
            for name, param in module.named_parameters(recurse=False):
                if id(param) not in seen:
                    seen.add(id(param))
                    out.append((module, name, param))
    return out


@torch.no_grad()
def _randomise(
    generator: torch.Generator,
    dense: Iterable[nn.Module],
    norms_in: Iterable[nn.Module] = (),
) -> None:
    """Re-draws parameters in place (so weight tying survives).

    Args:
        generator: Source of randomness.
        dense: Modules whose every parameter is re-drawn: norm weights ~ 1 + 0.3 N(0, 1), norm
            biases and other biases ~ 0.1 N(0, 1), everything else ~ 0.2 N(0, 1).
        norms_in: Modules in which only the parameters of norm layers are re-drawn.
    """

    def draw(param: nn.Parameter, std: float, mean: float = 0.0) -> None:
        # In place, without temporaries (a released-shape layer holds hundreds of millions of
        # values); the same bits as ``param.copy_(torch.randn(...) * std + mean)``.
        if param.dtype == torch.float32 and param.is_contiguous():
            torch.randn(param.shape, generator=generator, out=param.data)
            param.mul_(std).add_(mean)
            return
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        param.copy_(noise.mul_(std).add_(mean))

    dense_params = _owned_parameters(dense)
    dense_ids = {id(p) for _, _, p in dense_params}
    for module, name, param in dense_params:
        if _is_norm(module):
            if name == "weight":
                draw(param, NORM_WEIGHT_STD, 1.0)
            else:
                draw(param, NORM_BIAS_STD)
        elif name.endswith("bias"):
            draw(param, BIAS_STD)
        else:
            draw(param, LINEAR_STD)
    for module, name, param in _owned_parameters(norms_in):
        if id(param) in dense_ids or not _is_norm(module):
            continue
        if name == "weight":
            draw(param, NORM_WEIGHT_STD, 1.0)
        else:
            draw(param, NORM_BIAS_STD)


def _construct(
    model_cls: Callable[[Any], PreTrainedModel],
    config: Any,
    seed: int,
) -> PreTrainedModel:
    """Instantiates ``model_cls(config)`` under ``torch.manual_seed(seed)``.

    The global CPU RNG state is restored afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(config)


def _finish(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    dtype: torch.dtype,
) -> PreTrainedModel:
    """Sets architectures, generation ids, eager attention, eval mode and dtype."""
    model.config.architectures = [type(model).__name__]
    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    model.set_attn_implementation("eager")
    model.eval()
    _cast(model, dtype)
    return model


@torch.no_grad()
def _cast(model: nn.Module, dtype: torch.dtype) -> None:
    """Casts floating-point parameters and *persistent* buffers to ``dtype`` in place.

    Unlike ``model.to(dtype)`` this keeps non-persistent buffers (the RoPE ``inv_freq``) in
    float32, which is what ``from_pretrained(..., dtype=...)`` produces, so a saved bf16 model
    reloads to bit-identical logits. Parameters are cast through ``.data``, so ties survive.
    """
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point() and name not in module._non_persistent_buffers_set:
                module.register_buffer(name, buffer.to(dtype), persistent=True)
    if isinstance(model, PreTrainedModel):
        model.config.dtype = dtype


# ------------------------------------------------------------------------------------------------
# Chameleon
# ------------------------------------------------------------------------------------------------

CHAMELEON_IMAGE_SIZE = (16, 16)
_CHAMELEON_CODES = 16
_CHAMELEON_VQ_LEVELS = 3  # len(channel_multiplier) = L -> spatial downsample 2 ** (L - 1) = 4


def tiny_chameleon(
    *,
    swin_norm: bool = False,
    text_config: Mapping[str, Any] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> TinyVLM:
    """Builds a tiny ``ChameleonForConditionalGeneration``.

    A 16x16 image becomes 4x4 = 16 VQ codes (codebook of 16), i.e. 16 ``<image>`` positions
    wrapped as ``<racm3:break>`` + 16 x ``<image>`` + ``<eoss>``. The processor works in chat mode:
    it appends ``sep_token`` (``<reserved08706>``) to every prompt. Image-code columns of the
    logits are forced to ``finfo.min`` by the model, as in HF.

    Token ids: ``<s>`` 256 (BOS, prepended by the tokenizer), ``</s>`` 257, ``<pad>`` 258,
    ``<image>`` 259 (the placeholder, ``config.image_token_id``), ``<racm3:break>`` 260 (BOI),
    ``<eoss>`` 261 (EOI, right after the span), ``<reserved08706>`` 262 (sep), ``IMGIMG...Z``
    263-278 (VQ codes 0-15).

    Args:
        swin_norm: Use Chameleon's swin-norm (post-norm on each branch) decoder layers.
        text_config: Decoder config fields on top of the tiny shape (``hidden_size``,
            ``num_attention_heads``...), e.g. a released model's shapes at reduced depth.
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end (RoPE ``inv_freq`` stays float32,
            as after ``from_pretrained``).

    Returns:
        The tiny model with its processor and tokenizer.
    """
    # code i <-> "IMGIMG" + digits of i as letters (A=0 ... J=9) + "Z", as in the real vocab
    code_tokens = [
        "IMGIMG" + "".join(chr(ord("A") + int(c)) for c in str(i)) + "Z"
        for i in range(_CHAMELEON_CODES)
    ]
    tokenizer = _make_tokenizer(
        ["<s>", "</s>", "<pad>", "<image>", "<racm3:break>", "<eoss>", "<reserved08706>"],
        code_tokens,
        add_bos="<s>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        sep_token="<reserved08706>",
        image_token="<image>",
        boi_token="<racm3:break>",
        eoi_token="<eoss>",
    )
    height, width = CHAMELEON_IMAGE_SIZE
    config = ChameleonConfig(
        **_text_config(tokenizer, **(text_config or {})),
        swin_norm=swin_norm,
        vocabulary_map=tokenizer.get_vocab(),
        vq_config={
            "embed_dim": 8,
            "num_embeddings": _CHAMELEON_CODES,
            "latent_channels": 8,
            "resolution": height,
            "in_channels": 3,
            "base_channels": 32,  # every VQ norm is GroupNorm(32)
            "channel_multiplier": [1] * _CHAMELEON_VQ_LEVELS,
            "num_res_blocks": 1,
            "attn_resolutions": None,
        },
    )
    model = _construct(ChameleonForConditionalGeneration, config, seed)
    generator = torch.Generator().manual_seed(seed)
    language = [model.model.embed_tokens, model.model.layers, model.model.norm, model.lm_head]
    _randomise(generator, dense=language)

    n_image_tokens = (height // 2 ** (_CHAMELEON_VQ_LEVELS - 1)) * (
        width // 2 ** (_CHAMELEON_VQ_LEVELS - 1)
    )
    image_processor = ChameleonImageProcessorPil(
        size={"shortest_edge": height}, crop_size={"height": height, "width": width}
    )
    processor = ChameleonProcessor(image_processor, tokenizer, image_seq_length=n_image_tokens)
    return TinyVLM(
        model=_finish(model, tokenizer, dtype),
        processor=processor,
        tokenizer=tokenizer,
        family="chameleon",
        image_size=CHAMELEON_IMAGE_SIZE,
        prompt="<image>What is in the image?",
    )


# ------------------------------------------------------------------------------------------------
# Emu3
# ------------------------------------------------------------------------------------------------

EMU3_IMAGE_SIZE = (16, 24)
_EMU3_CODES = 16


def tiny_emu3(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyVLM:
    """Builds a tiny ``Emu3ForConditionalGeneration``.

    ``Emu3Processor`` hard-codes a spatial downsample of 8, so a 16x24 image gives 2x3 VQ codes;
    the model appends an EOL token (``<|extra_200|>``) to each row, so the placeholder span has
    2 * (3 + 1) = 8 positions. Expanded text per image: ``<|image start|>`` + ``"2*3"`` (plain
    text) + ``<|image token|>`` + 8 x ``<image>`` + ``<|extra_201|>`` (EOF) + ``<|image end|>``.
    The processor prepends BOS itself (the tokenizer does not). ``pixel_values`` must be passed
    together with ``image_sizes``.

    Token ids: ``<|endoftext|>`` 256 (pad), ``<|extra_203|>`` 257 (BOS), ``<|extra_204|>`` 258
    (EOS), ``<|extra_200|>`` 259 (EOL), ``<|extra_201|>`` 260 (EOF, right after the span),
    ``<|image start|>`` 261, ``<|image end|>`` 262, ``<|image token|>`` 263 (right before the
    span), ``<image>`` 264 (placeholder), ``<|visual token NNNNNN|>`` 265-280.

    Args:
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end (RoPE ``inv_freq`` stays float32,
            as after ``from_pretrained``).

    Returns:
        The tiny model with its processor and tokenizer.
    """
    code_tokens = [f"<|visual token {i:06d}|>" for i in range(_EMU3_CODES)]
    tokenizer = _make_tokenizer(
        [
            "<|endoftext|>",
            "<|extra_203|>",
            "<|extra_204|>",
            "<|extra_200|>",
            "<|extra_201|>",
            "<|image start|>",
            "<|image end|>",
            "<|image token|>",
            "<image>",
        ],
        code_tokens,
        bos_token="<|extra_203|>",
        eos_token="<|extra_204|>",
        pad_token="<|endoftext|>",
        image_token="<image>",
        boi_token="<|image start|>",
        eoi_token="<|image end|>",
        image_wrapper_token="<|image token|>",
        eof_token="<|extra_201|>",
    )
    config = Emu3Config(
        # the text defaults carry 151k-range special ids: they must be overridden
        text_config=_text_config(tokenizer),
        vq_config={
            "codebook_size": _EMU3_CODES,
            "embed_dim": 4,  # must equal latent_channels
            "latent_channels": 4,
            "base_channels": 32,  # GroupNorm(32)
            "channel_multiplier": [1, 1, 1, 1],  # 3 downsamples = 8, hard-coded in the processor
            "num_res_blocks": 1,
            "attn_resolutions": [],
            "hidden_size": 32,  # VQ attention dim == base_channels * channel_multiplier[-1]
            "num_attention_heads": 1,
            "temporal_downsample_factor": 4,
        },
        vocabulary_map=tokenizer.get_vocab(),
    )
    model = _construct(Emu3ForConditionalGeneration, config, seed)
    generator = torch.Generator().manual_seed(seed)
    _randomise(generator, dense=[model.model.text_model, model.lm_head])

    height, width = EMU3_IMAGE_SIZE
    image_processor = Emu3ImageProcessor(min_pixels=8 * 8, max_pixels=32 * 32, spatial_factor=8)
    processor = Emu3Processor(image_processor, tokenizer)
    return TinyVLM(
        model=_finish(model, tokenizer, dtype),
        processor=processor,
        tokenizer=tokenizer,
        family="emu3",
        image_size=(height, width),
        prompt="USER: <image>What is in the image? ASSISTANT:",
    )


# ------------------------------------------------------------------------------------------------
# Janus
# ------------------------------------------------------------------------------------------------

JANUS_IMAGE_SIZE = (16, 16)
_JANUS_PATCH = 4


def tiny_janus(
    *,
    tie_word_embeddings: bool = True,
    text_config: Mapping[str, Any] | None = None,
    vision_config: Mapping[str, Any] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> TinyVLM:
    """Builds a tiny ``JanusForConditionalGeneration``.

    SigLIP-like ViT (16x16 image, patch 4, so 16 patches, no CLS) -> MLP aligner -> 16
    ``<image_placeholder>`` positions wrapped as ``<begin_of_image>`` + 16 x placeholder +
    ``<end_of_image>``. ``JanusProcessor`` pads on the **left** by default. The generation config
    carries ``pad_token_id``, ``bos_token_id`` and ``generation_kwargs={"boi_token_id": ...}``, so
    ``generate(generation_mode="image")`` works too.

    Token ids: ``<｜begin▁of▁sentence｜>`` 256 (BOS, prepended by the tokenizer),
    ``<｜end▁of▁sentence｜>`` 257, ``<｜▁pad▁｜>`` 258, ``<image_placeholder>`` 259 (placeholder,
    ``config.image_token_id``), ``<begin_of_image>`` 260, ``<end_of_image>`` 261 (right after the
    span), ``<|User|>`` 262, ``<|Assistant|>`` 263.

    Args:
        tie_word_embeddings: Tie ``lm_head.weight`` to the input embeddings (Janus' default). When
            True, ``model.lm_head.weight is model.model.language_model.embed_tokens.weight``.
        text_config: Language-model config fields on top of the tiny shape.
        vision_config: Vision-tower config fields on top of the tiny shape (``image_size`` and
            ``patch_size`` set the number of image tokens and the processor's size).
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end (RoPE ``inv_freq`` stays float32,
            as after ``from_pretrained``).

    Returns:
        The tiny model with its processor and tokenizer.
    """
    bos = "<｜begin▁of▁sentence｜>"
    tokenizer = _make_tokenizer(
        [
            bos,
            "<｜end▁of▁sentence｜>",
            "<｜▁pad▁｜>",
            "<image_placeholder>",
            "<begin_of_image>",
            "<end_of_image>",
            "<|User|>",
            "<|Assistant|>",
        ],
        add_bos=bos,
        bos_token=bos,
        eos_token="<｜end▁of▁sentence｜>",
        pad_token="<｜▁pad▁｜>",
        image_token="<image_placeholder>",
        boi_token="<begin_of_image>",
        eoi_token="<end_of_image>",
    )
    text = _text_config(tokenizer, **(text_config or {}))
    vision: dict[str, Any] = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": JANUS_IMAGE_SIZE[0],
        "patch_size": _JANUS_PATCH,
        "mlp_ratio": 2,
        "projection_dim": text["hidden_size"],  # aligner output == text hidden size
        "depth": 2,
        **(vision_config or {}),
    }
    height = width = int(vision["image_size"])
    n_image_tokens = (height // vision["patch_size"]) * (width // vision["patch_size"])
    config = JanusConfig(
        text_config={"model_type": "llama", **text},
        vision_config={**vision, "num_image_tokens": n_image_tokens},
        vq_config={
            "embed_dim": 8,
            "num_embeddings": 16,
            "latent_channels": 8,
            "base_channels": 32,  # GroupNorm(32)
            "channel_multiplier": [1, 1, 1],  # factor 4 == patch size -> decoded image is 16x16
            "num_res_blocks": 1,
            "projection_dim": text["hidden_size"],
            "image_token_embed_dim": text["hidden_size"],
        },
        image_token_id=tokenizer.image_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    model = _construct(JanusForConditionalGeneration, config, seed)
    generator = torch.Generator().manual_seed(seed)
    inner = model.model
    _randomise(
        generator,
        dense=[inner.language_model, model.lm_head, inner.aligner],
        norms_in=[inner.vision_model],
    )
    # an extra field Janus reads; GenerationConfig keeps unknown attributes
    model.generation_config.generation_kwargs = {"boi_token_id": tokenizer.boi_token_id}  # type: ignore[attr-defined]

    image_processor = JanusImageProcessorPil(size={"height": height, "width": width}, min_size=4)
    processor = JanusProcessor(image_processor, tokenizer, num_image_tokens=n_image_tokens)
    return TinyVLM(
        model=_finish(model, tokenizer, dtype),
        processor=processor,
        tokenizer=tokenizer,
        family="janus",
        image_size=(height, width),
        prompt="<|User|>: <image_placeholder>\nWhat is in the image?\n\n<|Assistant|>:",
    )


# ------------------------------------------------------------------------------------------------
# LLaVA
# ------------------------------------------------------------------------------------------------

LLAVA_IMAGE_SIZE = (16, 16)
_LLAVA_PATCH = 4


def tiny_llava(
    *,
    text_backbone: str = "llama",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> TinyVLM:
    """Builds a tiny ``LlavaForConditionalGeneration`` (LLaVA-1.5 layout).

    CLIP vision tower (16x16 image, patch 4: 16 patches + CLS), features from layer -2 with CLS
    dropped (``"default"`` strategy), 2-layer GELU projector -> 16 ``<image>`` positions. There
    are no BOI/EOI tokens: the span is followed directly by the prompt text (a newline, ``Ċ``,
    id 198, in the sample prompt).

    Token ids: ``<s>`` 256 (BOS, prepended by the tokenizer), ``</s>`` 257, ``<unk>`` 258,
    ``<pad>`` 259, ``<image>`` 260 (placeholder, ``config.image_token_id``). All backbones share
    this tokenizer; the text config's pad/bos/eos ids are set from it.

    Args:
        text_backbone: ``text_config.model_type`` of the language model: ``"llama"``,
            ``"mistral"`` or ``"qwen2"`` (Qwen2 has q/k/v biases; Mistral keeps its default
            sliding window of 4096, wider than any test sequence).
        seed: Seed for the HF init and the weight randomisation.
        dtype: Dtype the parameters are cast to at the end (RoPE ``inv_freq`` stays float32,
            as after ``from_pretrained``).

    Returns:
        The tiny model with its processor and tokenizer.

    Raises:
        ValueError: If ``text_backbone`` is not one of :data:`LLAVA_TEXT_BACKBONES`.
    """
    if text_backbone not in LLAVA_TEXT_BACKBONES:
        raise ValueError(
            f"unknown text_backbone {text_backbone!r}; expected one of {LLAVA_TEXT_BACKBONES}"
        )
    tokenizer = _make_tokenizer(
        ["<s>", "</s>", "<unk>", "<pad>", "<image>"],
        add_bos="<s>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        image_token="<image>",
    )
    height, width = LLAVA_IMAGE_SIZE
    n_image_tokens = (height // _LLAVA_PATCH) * (width // _LLAVA_PATCH)
    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": height,
            "patch_size": _LLAVA_PATCH,
            "projection_dim": 32,
        },
        text_config={"model_type": text_backbone, **_text_config(tokenizer)},
        image_token_index=tokenizer.image_token_id,
        image_seq_length=n_image_tokens,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = _construct(LlavaForConditionalGeneration, config, seed)
    generator = torch.Generator().manual_seed(seed)
    inner = model.model
    _randomise(
        generator,
        dense=[inner.language_model, model.lm_head, inner.multi_modal_projector],
        norms_in=[inner.vision_tower],
    )

    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": height}, crop_size={"height": height, "width": width}
    )
    processor = LlavaProcessor(
        image_processor,
        tokenizer,
        patch_size=_LLAVA_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS; the "default" strategy drops it again
    )
    return TinyVLM(
        model=_finish(model, tokenizer, dtype),
        processor=processor,
        tokenizer=tokenizer,
        family="llava",
        image_size=LLAVA_IMAGE_SIZE,
        prompt="USER: <image>\nWhat is in the image? ASSISTANT:",
    )

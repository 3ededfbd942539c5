"""`HookedVLM`: a vision-language model with TransformerLens hooks and token roles.

The only module that touches TransformerLens bridge internals. Every call forwards the image
inputs of its `Batch`; nothing can silently run text-only.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from PIL import Image
from torch import Tensor, nn
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from vlm_lens import hooks as hook_names
from vlm_lens.adapters import VLMAdapter, adapter_class_for
from vlm_lens.adapters.processor_loading import load_processor
from vlm_lens.batch import Batch, check_origin, move_inputs, processor_fingerprint
from vlm_lens.checkpoints import resolve_checkpoint
from vlm_lens.engine import attention
from vlm_lens.engine.compat import attention_implementations, attn_implementation, register_aliases
from vlm_lens.engine.components import build_bridge
from vlm_lens.engine.hook_checks import checked_hooks
from vlm_lens.engine.image_features import (
    attach_deepstack_hooks,
    attach_image_hook,
    set_images_per_sequence,
)
from vlm_lens.engine.placement import (
    Placement,
    align_layer_inputs,
    check_device_map,
    check_dispatched,
    explain_offload_errors,
)
from vlm_lens.engine.prefix import PrefixCache, check_upto, prefix_inputs, suffix_inputs
from vlm_lens.engine.query_block import query_block
from vlm_lens.engine.tl_habits import TransformerLensHabits
from vlm_lens.errors import UnsupportedModelError, VLMInputError
from vlm_lens.images import to_rgb
from vlm_lens.layout import TokenLayout
from vlm_lens.types import HookList, ImageLike


class HookedVLM(TransformerLensHabits):
    """A Hugging Face VLM wrapped in a TransformerLens `TransformerBridge`, aware of token roles.

    Build one with `from_pretrained` (hub id or local folder) or `from_hf` (a model in memory).
    `prepare` turns images and prompts into a `Batch` (inputs + `TokenLayout`); `forward`,
    `run_with_cache`, `run_with_hooks`, `hooks` and `generate` take that batch and always pass
    its image inputs. Logits are bit-identical to the Hugging Face model run with the same
    attention implementation (`attn_implementation`): with ``"sdpa"`` attention runs through
    PyTorch's fused kernel, except in layers whose ``hook_attn_scores``/``hook_pattern`` have a
    hook attached, which run exactly as HF eager (`vlm_lens.engine.attention`).

    Attributes:
        bridge: the TransformerLens bridge (hooks, cache, ``cfg``).
        adapter: the family adapter (token spec, image inputs).
        processor: the Hugging Face processor, or ``None``.
        hook_image_embeds: image features entering the decoder, ``[batch, n_image_tokens,
            d_model]`` (see `vlm_lens.hooks.IMAGE_EMBEDS`).

    Example:
        >>> from vlm_lens import HookedVLM, hooks
        >>> from vlm_lens.testing import build_tiny, sample_image
        >>> tiny = build_tiny("chameleon")
        >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
        >>> batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
        >>> logits, cache = model.run_with_cache(batch, names_filter=hooks.lm_filter("resid_post"))
        >>> gate = batch.layout.positions("gate")[0]
        >>> cache[hooks.resid_post(0)][0, gate].shape
        torch.Size([1, 32])
    """

    def __init__(self, bridge: TransformerBridge, adapter: VLMAdapter, processor: Any | None):
        super().__init__()
        self._placement: Placement | None = None
        self.bridge = bridge
        self.adapter = adapter
        self.processor = processor
        self._feature_owner = adapter.image_features_owner(bridge.original_model)
        self.hook_image_embeds = attach_image_hook(self._feature_owner, adapter)
        bridge.hook_image_embeds = self.hook_image_embeds  # registers it in bridge.hook_dict
        deepstack = attach_deepstack_hooks(self._feature_owner, adapter)
        if deepstack is not None:  # registers hook_deepstack_embeds.{i} (DeepstackHooks.get_hooks)
            bridge.hook_deepstack_embeds = deepstack
        bridge.hook_aliases = {
            **type(bridge).hook_aliases,
            hook_names.INPUTS_EMBEDS: "blocks.0.hook_in",
        }
        register_aliases(bridge)
        attention.route_decoder(bridge.original_model, self._hf_attention(0).config)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        device_map: str | Mapping[str, Any] | None = None,
        max_memory: Mapping[int | str, int | str] | None = None,
        offload_folder: str | os.PathLike[str] | None = None,
        **hf_kwargs: Any,
    ) -> HookedVLM:
        """Load a supported VLM and its processor from a hub id or a local folder.

        Loads through the transformers classes (never installs anything, never boots
        TransformerLens' hub path); works offline (``HF_HUB_OFFLINE=1``) on a local folder.

        Args:
            name_or_path: hub id (``"facebook/chameleon-7b"``), a folder saved with
                ``save_pretrained``, or a built-in organism (``"organism:native"``,
                ``"organism:nonnative"``; see `vlm_lens.zoo`).
            device: where to put the model (default: CPU).
            dtype: parameter dtype (default: the checkpoint's).
            attn_implementation: Hugging Face attention implementation (``"sdpa"``, the
                default, ``"eager"``, ``"flash_attention_2"``...). Layers with attention-score
                or pattern hooks run eager whatever this is; see `set_attn_implementation`.
            device_map: shard the model with accelerate's big-model loading, as transformers'
                ``from_pretrained``: ``"auto"`` (fill the GPUs in order, then CPU, then disk),
                ``"balanced"``, ``"sequential"``, or a dict of module name to a GPU index,
                ``"cpu"`` or ``"disk"``. Not with `device`. ``"meta"`` is refused.
            max_memory: the most each device may hold, e.g. ``{0: "40GiB", 1: "40GiB",
                "cpu": "100GiB"}`` (with a string `device_map`).
            offload_folder: where ``"disk"`` modules keep their weights.
            **hf_kwargs: passed to ``from_pretrained`` of the model and processor
                (``revision=``, ``local_files_only=``, ``trust_remote_code=`` ...).

        Raises:
            UnsupportedModelError: before loading weights, if the architecture is not supported.
            ValueError: for `device` with `device_map`, or a map with ``"meta"`` modules.
            VLMInputError: when a local folder's processor files are broken (names the file).

        Example:
            >>> model = HookedVLM.from_pretrained("llava-hf/llava-1.5-7b-hf")  # doctest: +SKIP
            >>> model = HookedVLM.from_pretrained(  # doctest: +SKIP
            ...     "facebook/chameleon-30b", device_map="auto", max_memory={0: "40GiB", 1: "40GiB"}
            ... )
        """
        import transformers

        check_device_map(device_map, device)
        if device_map is None and (max_memory is not None or offload_folder is not None):
            raise ValueError(
                "max_memory= and offload_folder= take effect only with device_map=; pass "
                "device_map='auto' (or a dict) as well"
            )
        name_or_path = resolve_checkpoint(name_or_path)
        config = transformers.AutoConfig.from_pretrained(name_or_path, **hf_kwargs)
        model_cls, adapter_cls = _model_class(config)
        placement: dict[str, Any] = {}
        if device_map is not None:
            placement = {"device_map": device_map, "max_memory": max_memory}
            if offload_folder is not None:
                placement["offload_folder"] = offload_folder
        model: Any = model_cls.from_pretrained(  # type: ignore[attr-defined]  # a PreTrainedModel
            name_or_path,
            dtype=dtype,
            attn_implementation=attn_implementation,
            **placement,
            **hf_kwargs,
        )
        if device is not None:
            model = model.to(device)
        processor = load_processor(adapter_cls, name_or_path, **hf_kwargs)
        return cls.from_hf(model, processor, copy_model=False)

    @classmethod
    def from_hf(
        cls, model: nn.Module, processor: Any | None = None, *, copy_model: bool = True
    ) -> HookedVLM:
        """Wrap a Hugging Face VLM that is already in memory.

        The bridge rewires the model it wraps in place (its submodules become bridge components
        that fire hooks). By default the model is deep-copied first, so `model` stays a plain
        Hugging Face model; pass ``copy_model=False`` to save memory, after which `model` belongs
        to the `HookedVLM` (calling it directly fires the hooks). A model dispatched by
        accelerate (loaded with ``device_map=``; ``hf_device_map`` set) keeps its placement:
        pass ``copy_model=False`` for one on GPUs, since a copy duplicates every shard. The
        model keeps the attention
        implementation it was built with (``model.config._attn_implementation``), which
        TransformerLens would otherwise force to eager.

        Args:
            model: a ``*ForConditionalGeneration`` of a supported family.
            processor: its processor (needed by `prepare`; without it build batches with
                `batch_from_inputs`).
            copy_model: deep-copy `model` before wrapping (default ``True``).

        Raises:
            UnsupportedModelError: for an architecture no adapter handles (text-only models
                included), listing the supported ones and how to add one.

        Example:
            >>> from vlm_lens.testing import build_tiny
            >>> tiny = build_tiny("janus")
            >>> HookedVLM.from_hf(tiny.model, tiny.processor).family
            'janus'
        """
        adapter_cls = adapter_class_for(model)
        check_dispatched(model)
        if copy_model:
            model = copy.deepcopy(model)
        model.eval()
        adapter = adapter_cls(model, processor)
        chosen = attention_implementations(model.config)
        placement = Placement.of(model)  # before the bridge replaces the modules it names
        bridge = build_bridge(model, adapter.architecture, placement)
        if chosen != attention_implementations(model.config):  # the TL adapter forced eager
            getattr(model, "set_attn_implementation")(chosen)  # noqa: B009 - a PreTrainedModel's
        out = cls(bridge, adapter, processor)
        out._placement = placement
        layers = [block.original_component for block in bridge.blocks]
        align_layer_inputs(bridge.blocks, placement, layers)
        return out

    def to(self, *args: Any, **kwargs: Any) -> HookedVLM:
        """``nn.Module.to``, refused for a model dispatched over a ``device_map``.

        Raises:
            ValueError: for a dispatched model (moving it would strand its offloaded weights and
                its accelerate hooks); load it again with another ``device_map`` or ``device``.
        """
        self._refuse_move("to")
        return super().to(*args, **kwargs)

    def cuda(self, device: Any = None) -> HookedVLM:
        """``nn.Module.cuda``, refused for a dispatched model (see `to`)."""
        self._refuse_move("cuda")
        return super().cuda(device)

    def cpu(self) -> HookedVLM:
        """``nn.Module.cpu``, refused for a dispatched model (see `to`)."""
        self._refuse_move("cpu")
        return super().cpu()

    def _refuse_move(self, how: str) -> None:
        placement = getattr(self, "_placement", None)
        if placement is not None and placement.dispatched:
            raise ValueError(
                f"model.{how}(...) would move a model that accelerate dispatched over "
                f"device_map {placement.device_map}, stranding its offloaded weights and "
                "hooks; load it again with HookedVLM.from_pretrained(..., device_map=...) or "
                "device=... instead"
            )

    # ------------------------------------------------------------------ properties
    @property
    def hf_model(self) -> nn.Module:
        """The wrapped Hugging Face model (rewired: calling it fires the hooks)."""
        return self.bridge.original_model

    @property
    def cfg(self) -> Any:
        """TransformerLens config of the language model (``n_layers``, ``d_model``...)."""
        return self.bridge.cfg

    @property
    def family(self) -> str:
        """Family name: ``"chameleon"``, ``"emu3"``, ``"janus"`` or ``"llava"``."""
        return self.adapter.family

    @property
    def tokenizer(self) -> Any | None:
        """The processor's tokenizer, or ``None``."""
        return self.adapter.tokenizer

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the model's parameters or, for a model dispatched
        over a ``device_map``, the device its input embedding runs on (`prepare` puts batches
        there; logits come back there)."""
        if self._placement is not None and self._placement.dispatched:
            return self._placement.input_device
        return next(self.hf_model.parameters()).device

    @property
    def devices(self) -> tuple[torch.device, ...]:
        """Every device the model runs on (one, unless dispatched over several).

        Example:
            >>> from vlm_lens.testing import build_tiny
            >>> HookedVLM.from_hf(build_tiny("llava").model).devices
            (device(type='cpu'),)
        """
        if self._placement is not None and self._placement.dispatched:
            return self._placement.devices
        return (self.device,)

    @property
    def hf_device_map(self) -> dict[str, Any] | None:
        """The accelerate ``device_map`` the model was dispatched with, or ``None``."""
        placement = self._placement
        return dict(placement.device_map) if placement and placement.device_map else None

    def layer_device(self, layer: int) -> torch.device:
        """The device decoder layer `layer` runs on; its hooks see tensors there.

        Example:
            >>> from vlm_lens.testing import build_tiny
            >>> HookedVLM.from_hf(build_tiny("llava").model).layer_device(1)
            device(type='cpu')
        """
        if not 0 <= layer < self.cfg.n_layers:
            raise ValueError(f"layer {layer} is out of range; the model has {self.cfg.n_layers}")
        if self._placement is None or not self._placement.dispatched:
            return self.device
        return self._placement.device_of(self.bridge.blocks[layer].original_component)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's parameters."""
        return next(self.hf_model.parameters()).dtype

    @property
    def attn_implementation(self) -> str:
        """The language model's attention implementation (``"sdpa"``, ``"eager"``...).

        Layers with a hook on ``hook_attn_scores`` or ``hook_pattern`` run eager regardless.
        """
        name = attn_implementation(self._hf_attention(0).config) or "eager"
        return attention.base_name(name)

    def set_attn_implementation(self, implementation: str | dict[str, Any]) -> HookedVLM:
        """Switch the attention implementation, as Hugging Face's ``set_attn_implementation``.

        A string applies to every attention (language model and vision tower); a dict such as
        ``{"text_config": "sdpa"}`` to the named sub-models only. Returns `self`.

        Example:
            >>> from vlm_lens.testing import build_tiny
            >>> tiny = build_tiny("llava")
            >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
            >>> model.attn_implementation, model.set_attn_implementation("sdpa").attn_implementation
            ('eager', 'sdpa')
        """
        known = (
            "eager",
            *(k for k in ALL_ATTENTION_FUNCTIONS if not k.startswith(attention.PREFIX)),
        )
        if isinstance(implementation, str) and implementation not in known:
            raise ValueError(
                f"unknown attention implementation {implementation!r}; use 'eager', 'sdpa' or "
                f"one of {sorted(known)}"
            )
        hf: Any = self.hf_model
        before = attention_implementations(hf.config)
        try:
            hf.set_attn_implementation(implementation)
        except ValueError:  # HF refused one sub-model (Gemma 2: no SDPA): leave none switched
            hf.set_attn_implementation(before)
            raise
        attention.route_decoder(self.hf_model, self._hf_attention(0).config)
        return self

    def attention_scaling(self, layer: int) -> float:
        """The factor ``q . k`` is multiplied by in `layer` (usually ``d_head ** -0.5``)."""
        return float(self._hf_attention(layer).scaling)

    def attention_window(self, layer: int) -> int | None:
        """The sliding-window size of `layer`'s attention, or ``None`` for full attention."""
        return attention.sliding_window(self._hf_attention(layer))

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        """Every hook point by name (TransformerLens and legacy names, and vlm_lens' own)."""
        return self.bridge.hook_dict

    def hook_names(self, *, vision: bool = False) -> list[str]:
        """Sorted hook names; only language-model and multimodal ones unless `vision`."""
        names = self.hook_dict
        return sorted(n for n in names if vision or hook_names.is_language_model_hook(n))

    # ------------------------------------------------------------------ inputs
    def prepare(
        self,
        images: ImageLike | Sequence[ImageLike] | Sequence[Sequence[ImageLike]] | None = None,
        text: str | Sequence[str] = "",
        *,
        padding_side: str | None = None,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> Batch:
        """Turn images and prompts into a `Batch` on the model's device.

        Each prompt marks where its images go with the family's placeholder
        (``model.image_placeholder``: ``"<image>"``; Janus ``"<image_placeholder>"``), which
        the processor expands to the image tokens.

        Args:
            images: one image (PIL or an ``[H, W, 3]`` uint8 array), a list with one image per
                prompt (or all images of a single prompt), or a list of lists (several images
                per prompt). ``None`` for text-only prompts.
            text: one prompt or a list of prompts.
            padding_side: ``"left"`` or ``"right"``; default: the tokenizer's.
            processor_kwargs: further arguments of the family's processor, e.g. PaliGemma's
                ``suffix=`` (text after the prompt, in the causal part of its prefix-LM).

        Returns:
            The `Batch` (``batch.inputs`` for the HF model, ``batch.layout`` for roles).

        Raises:
            VLMInputError: without a processor, or when a prompt's placeholders do not match its
                images (none given, missing, or too many).

        Example:
            >>> from vlm_lens.testing import build_tiny, sample_image
            >>> tiny = build_tiny("emu3")
            >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
            >>> img = sample_image(size=tiny.image_size)
            >>> b = model.prepare(images=[img, img], text=[tiny.prompt, tiny.prompt + " Why?"])
            >>> b.layout.counts()["gate"]
            [1, 1]
        """
        if self.processor is None:
            raise VLMInputError(
                "this HookedVLM has no processor, so it cannot prepare images and text; pass "
                "one to HookedVLM.from_hf(model, processor), or build the inputs yourself and "
                "call model.batch_from_inputs(inputs)"
            )
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise VLMInputError("text is empty; give at least one prompt")
        groups = _group_images(images, len(texts))
        placeholder = self.image_placeholder
        for i, (prompt, imgs) in enumerate(zip(texts, groups, strict=True)):
            found = prompt.count(placeholder)
            if found != len(imgs):
                raise VLMInputError(_placeholder_message(i, prompt, found, len(imgs), placeholder))
        flat = [_to_pil(img) for imgs in groups for img in imgs]
        kwargs: dict[str, Any] = {**(processor_kwargs or {}), "return_tensors": "pt"}
        if len(texts) > 1:
            kwargs["padding"] = True
        if padding_side is not None:
            kwargs["padding_side"] = padding_side
        nested = [[_to_pil(img) for img in imgs] for imgs in groups]
        try:
            encoded = self.processor(
                images=self.adapter.processor_images(nested) if flat else None,
                text=texts,
                **kwargs,
            )
        except ValueError as error:
            if flat:
                raise
            raise VLMInputError(  # PaliGemma's processor takes no text-only prompt
                f"the {self.family} processor refused prompts without images ({error}); give "
                "each prompt an image, or tokenize the text yourself and call "
                "model.batch_from_inputs(inputs)"
            ) from error
        # ``labels`` (PaliGemma's processor writes them) are a training target, not an input
        inputs = move_inputs(
            {k: v for k, v in encoded.items() if k != "labels"}, self.device, self.dtype
        )
        layout = self.layout(inputs["input_ids"], inputs.get("attention_mask"), image_inputs=inputs)
        attention = self.adapter.attention_structure(layout, inputs)
        batch = Batch(
            inputs, layout, tuple(len(g) for g in groups), tuple(texts), attention, self._origin
        )
        self._check(batch)
        return batch

    @property
    def image_placeholder(self) -> str:
        """The string that marks an image in a prompt."""
        return self.adapter.image_placeholder

    def layout(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        *,
        image_inputs: Mapping[str, Any] | None = None,
    ) -> TokenLayout:
        """The `TokenLayout` of token ids built by hand (placeholders or image-code ids).

        Families whose roles need the image inputs (LLaVA-Next and LLaVA-OneVision: the
        ``image_newline`` row ends hold the placeholder id, and images differ in length) take
        them as `image_inputs` (``pixel_values``, ``image_sizes``...: the processor's output)
        and refuse token ids alone (``adapter.layout_needs_image_inputs``).

        Raises:
            VLMInputError: without `image_inputs` for such a family.

        Example:
            >>> from vlm_lens.testing import build_tiny, sample_image
            >>> tiny = build_tiny("llava")
            >>> model = HookedVLM.from_hf(tiny.model, tiny.processor)
            >>> b = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
            >>> model.layout(b.input_ids).counts() == b.layout.counts()
            True
        """
        layout = self.adapter.layout(input_ids, attention_mask)
        if image_inputs is not None and image_inputs.get("pixel_values") is not None:
            ids = {"input_ids": input_ids, "attention_mask": attention_mask}
            return self.adapter.refine_layout(layout, {**image_inputs, **ids})
        if (
            image_inputs is None
            and self.adapter.layout_needs_image_inputs
            and layout.spans != ((),) * layout.shape[0]
        ):
            raise VLMInputError(
                f"{self.family} marks image row ends and image lengths from the image inputs, "
                "not from the token ids; pass them: model.layout(input_ids, attention_mask, "
                "image_inputs=inputs), or use model.batch_from_inputs(inputs)"
            )
        return layout

    def batch_from_inputs(
        self, inputs: Mapping[str, Any], images_per_sequence: Sequence[int] | None = None
    ) -> Batch:
        """A `Batch` from a dict of model inputs built by hand (``input_ids`` required).

        Raises:
            VLMInputError: if the image inputs do not match the placeholders.
        """
        if "input_ids" not in inputs:
            raise VLMInputError("inputs need 'input_ids' (a [batch, pos] tensor of token ids)")
        data = dict(inputs)
        ids = data["input_ids"]
        if ids.ndim == 1:
            data["input_ids"] = ids = ids[None]
        layout = self.layout(ids, data.get("attention_mask"), image_inputs=data)
        if images_per_sequence is None:
            images_per_sequence = layout.n_images
        attention = self.adapter.attention_structure(layout, data)
        batch = Batch(data, layout, tuple(images_per_sequence), attention=attention)
        self._check(batch)
        return batch

    # ------------------------------------------------------------------ running
    def forward(
        self, batch: Batch | Mapping[str, Any], *, return_type: str | None = "logits", **kwargs: Any
    ) -> Any:
        """Run the model on a batch; returns ``[batch, pos, d_vocab]`` logits by default.

        Args:
            batch: a `Batch` (or a dict of model inputs, checked the same way).
            return_type: as in TransformerLens (``"logits"``, ``"loss"``, ``None``...).
            **kwargs: passed to the bridge (``stop_at_layer=`` ...) and the HF forward.
        """
        batch = self._as_batch(batch)
        input_ids, model_kwargs = self._call_args(batch, kwargs)
        with self._image_groups(batch):
            return self.bridge(input_ids, return_type=return_type, **model_kwargs)

    def run_with_cache(
        self,
        batch: Batch | Mapping[str, Any],
        *,
        names_filter: str | Sequence[str] | Callable[[str], bool] | None = None,
        **kwargs: Any,
    ) -> tuple[Float[Tensor, "batch pos d_vocab"], ActivationCache]:
        """Run and cache activations, as TransformerLens' ``run_with_cache``.

        Args:
            batch: a `Batch`.
            names_filter: a hook name, a list of names or a predicate
                (`vlm_lens.hooks.lm_filter` builds one that never matches the vision tower);
                ``None`` caches everything, the vision tower included.
            **kwargs: passed on (``stop_at_layer=``, ``device=`` to offload the cache...).

        Returns:
            ``(logits, cache)``. Each cached activation stays on the device its hook ran on
            (for a sharded model: its layer's, `layer_device`) unless ``device=`` names one;
            each is then moved there as it is recorded, also for a sharded model.
        """
        batch = self._as_batch(batch)
        input_ids, model_kwargs = self._call_args(batch, kwargs)
        with self._image_groups(batch), warnings.catch_warnings():
            # TransformerLens warns that device= is ignored on a model spread over several
            # devices, but its cache hook does move each activation there (tested).
            warnings.filterwarnings("ignore", message=r"run_with_cache\(device=.*ignored")
            return self.bridge.run_with_cache(input_ids, names_filter=names_filter, **model_kwargs)

    def run_with_hooks(
        self,
        batch: Batch | Mapping[str, Any],
        *,
        fwd_hooks: HookList = (),
        bwd_hooks: HookList = (),
        **kwargs: Any,
    ) -> Any:
        """Run with temporary hooks; they are removed afterwards, also when a hook raises."""
        batch = self._as_batch(batch)
        input_ids, model_kwargs = self._call_args(batch, kwargs)
        with self._image_groups(batch):
            return self.bridge.run_with_hooks(
                input_ids,
                fwd_hooks=checked_hooks(fwd_hooks),
                bwd_hooks=list(bwd_hooks),
                **model_kwargs,
            )

    def prefix_cache(self, batch: Batch | Mapping[str, Any], *, upto: int) -> PrefixCache:
        """Run positions ``0 .. upto-1`` of `batch` once (no grad) and keep their KV cache.

        Reuse it with `run_suffix` for every condition that cannot change those positions
        (``intervention.earliest >= upto``): a sweep of ``k`` conditions then costs one prefix
        pass plus ``k`` passes over the remaining positions. Hooks active around this call
        (``with model.hooks(...)``) fire in the prefix pass and shape the cache. The prefix's
        logits are never read, so the unembedding runs on its last position only.

        Args:
            batch: a `Batch`.
            upto: number of positions to cache; must include every image token and leave at
                least one position.

        Returns:
            A `PrefixCache` (see `vlm_lens.engine.prefix`).

        Raises:
            VLMInputError: if `upto` splits or precedes an image, or leaves nothing to compute.

        Example:
            >>> prefix = model.prefix_cache(batch, upto=ko.earliest)  # doctest: +SKIP
            >>> logits = model.run_suffix(prefix, fwd_hooks=ko)  # doctest: +SKIP
        """
        from transformers import DynamicCache

        batch = self._as_batch(batch)
        check_upto(batch, upto)
        position_ids = self.adapter.position_ids(batch.inputs)
        inputs = prefix_inputs(batch, upto, position_ids)
        input_ids = inputs.pop("input_ids")
        cache = DynamicCache()
        if "logits_to_keep" in inspect.signature(self.hf_model.forward).parameters:
            inputs["logits_to_keep"] = 1  # the prefix's logits are never read
        with self._image_groups(batch), torch.no_grad():
            self.bridge(input_ids, return_type=None, past_key_values=cache, **inputs)
        return PrefixCache(batch, upto, cache, position_ids)

    def run_suffix(
        self, prefix: PrefixCache, *, fwd_hooks: HookList = (), **kwargs: Any
    ) -> Float[Tensor, "batch suffix d_vocab"]:
        """Run positions ``prefix.upto ..`` of the prefix's batch on its cache, with hooks.

        Equal to the same positions of a full `run_with_hooks` for hooks that leave the
        prefix unchanged (an `Intervention` with ``earliest >= prefix.upto``; patching,
        steering and knockout hooks know their block's offset, `vlm_lens.engine.query_block`).
        Activations seen by hooks have ``suffix`` positions. The cache is restored afterwards,
        also when a hook raises.

        Args:
            prefix: from `prefix_cache`.
            fwd_hooks: hooks for this pass.
            **kwargs: passed to the bridge (``return_type=`` ...).

        Returns:
            ``[batch, pos - upto, d_vocab]`` logits of the suffix positions.
        """
        batch = prefix.batch
        inputs = suffix_inputs(
            batch, prefix.upto, self.adapter.image_input_keys, prefix.position_ids
        )
        input_ids = inputs.pop("input_ids")
        try:
            with query_block(prefix.upto), explain_offload_errors(self._placement):
                return self.bridge.run_with_hooks(
                    input_ids,
                    fwd_hooks=checked_hooks(fwd_hooks),
                    past_key_values=prefix.past_key_values,
                    **inputs,
                    **kwargs,
                )
        finally:
            prefix.restore()

    @contextmanager
    def hooks(self, fwd_hooks: HookList = (), bwd_hooks: HookList = ()) -> Iterator[HookedVLM]:
        """Context manager that adds hooks for every call inside it and removes them on exit,
        also on an exception.

        Example:
            >>> with model.hooks(fwd_hooks=[(hooks.resid_pre(0), fn)]):  # doctest: +SKIP
            ...     logits = model(batch)
        """
        with self.bridge.hooks(fwd_hooks=checked_hooks(fwd_hooks), bwd_hooks=list(bwd_hooks)):
            yield self

    def generate(
        self,
        batch: Batch | Mapping[str, Any],
        *,
        max_new_tokens: int = 20,
        fwd_hooks: HookList = (),
        do_sample: bool = False,
        prefix: PrefixCache | None = None,
        return_type: Literal["tokens", "str"] = "tokens",
        **generate_kwargs: Any,
    ) -> Int[Tensor, "batch total_pos"] | list[str]:
        """Generate text with the image inputs and any hooks active on every step.

        Runs Hugging Face ``generate`` (KV cache, the model's own input preparation) on the
        wrapped model, so greedy tokens equal the HF model's; hooks fire on the prompt pass and
        on every new token (a query length of 1 with the cache).

        With `prefix` (from `prefix_cache` on this batch), generation starts from a copy of
        its clean KV cache: the first pass computes only positions ``prefix.upto ..`` of the
        prompt (with `fwd_hooks`, which must leave the prefix unchanged: an `Intervention`
        with ``earliest >= prefix.upto``), so many conditions share one prefix pass. The
        prefix is never written. It needs the positions Hugging Face ``generate`` derives
        from the mask (`can_generate_from_prefix`: no padding, ``0 .. n-1`` positions).

        Args:
            batch: a `Batch`.
            max_new_tokens: number of tokens to generate.
            fwd_hooks: hooks active during generation.
            do_sample: sample instead of greedy decoding.
            prefix: a clean prefix of `batch` to start from (``None``: the whole prompt).
            return_type: ``"tokens"`` (the ids) or ``"str"`` (TransformerLens' name: the new
                text of each prompt, decoded without special tokens; the prompt, mostly image
                placeholders, is left out).
            **generate_kwargs: passed to HF ``generate``.

        Returns:
            ``[batch, prompt_len + new]`` token ids (decode with ``model.tokenizer``), or one
            string per prompt for ``return_type="str"``.

        Raises:
            VLMInputError: for a prefix of another batch, or a batch that cannot generate
                from a prefix (`can_generate_from_prefix`).

        Example:
            >>> prefix = model.prefix_cache(batch, upto=ko.earliest)  # doctest: +SKIP
            >>> out = model.generate(batch, prefix=prefix, fwd_hooks=ko)  # doctest: +SKIP
        """
        if return_type not in ("tokens", "str"):
            raise VLMInputError(f"return_type must be 'tokens' or 'str', got {return_type!r}")
        batch = self._as_batch(batch)
        inputs = dict(batch.inputs)
        first_pass: Any = nullcontext()
        if prefix is not None:
            if prefix.batch is not batch and not torch.equal(
                prefix.batch.input_ids, batch.input_ids
            ):
                raise VLMInputError(
                    "the prefix was computed on another batch; build it with "
                    "model.prefix_cache(batch, upto=...) on the batch you generate from"
                )
            if not self.can_generate_from_prefix(batch):
                raise VLMInputError(
                    "this batch cannot generate from a prefix: Hugging Face generate numbers "
                    "positions from the attention mask, which differs from the prefix's "
                    "positions for a padded batch or a family with its own position ids; "
                    "batch prompts of equal length, or generate without prefix="
                )
            inputs = {k: v for k, v in inputs.items() if k not in self.adapter.image_input_keys}
            inputs["past_key_values"] = copy.deepcopy(prefix.past_key_values)
            first_pass = self._first_pass_from(prefix.upto)
        if (
            "past_key_values" not in generate_kwargs
            and "past_key_values" not in inputs
            and any(self.attention_window(layer) is not None for layer in range(self.cfg.n_layers))
        ):
            # HF's default cache keeps only the window's keys on sliding layers, so hooks would
            # see fewer key positions than the batch has; a DynamicCache keeps every position.
            from transformers import DynamicCache

            generate_kwargs["past_key_values"] = DynamicCache()
        with (
            self.hooks(fwd_hooks=fwd_hooks),
            self._image_groups(batch),
            first_pass,
            torch.no_grad(),
        ):
            hf: Any = self.hf_model
            out = hf.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, **generate_kwargs
            )
        if return_type == "tokens":
            return out
        new = out[:, batch.input_ids.shape[1] :].tolist()
        return [str(t) for t in self._need_tokenizer().batch_decode(new, skip_special_tokens=True)]

    def can_generate_from_prefix(self, batch: Batch) -> bool:
        """Whether `generate(batch, prefix=...)` gives the tokens of a plain `generate`: the
        batch has no padding and the family numbers positions ``0 .. n-1`` (so the positions
        Hugging Face ``generate`` derives from the mask are the prefix's).

        Example:
            >>> model.can_generate_from_prefix(batch)  # doctest: +SKIP
            True
        """
        mask = batch.attention_mask
        if mask is not None and not bool(mask.bool().all()):
            return False
        positions = self.adapter.position_ids(batch.inputs)
        length = int(batch.input_ids.shape[1])
        plain = torch.arange(length, device=positions.device)
        return positions.ndim == 2 and bool((positions == plain).all())

    @contextmanager
    def _first_pass_from(self, offset: int) -> Iterator[None]:
        """Mark the first forward pass of the HF model inside as the prompt suffix from
        `offset` (`query_block`), so hooks that write at prompt positions find them; later
        passes (one new token each) are generation steps."""
        state: dict[str, Any] = {"calls": 0, "block": None}

        def before(_module: Any, _args: Any) -> None:
            state["calls"] += 1
            if state["calls"] == 1:
                state["block"] = query_block(offset)
                state["block"].__enter__()

        def after(_module: Any, _args: Any, _output: Any) -> None:
            if state["block"] is not None:
                block, state["block"] = state["block"], None
                block.__exit__(None, None, None)

        handles = [
            self.hf_model.register_forward_pre_hook(before),
            self.hf_model.register_forward_hook(after),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            if state["block"] is not None:
                state["block"].__exit__(None, None, None)

    def resid_to_logits(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """Final norm and unembedding of residual vectors: the logit lens.

        Applied to the last block's ``resid_post`` it reproduces the model's logits exactly
        (Chameleon's mask of the image-code columns included).

        Example:
            >>> logits, cache = model.run_with_cache(batch)  # doctest: +SKIP
            >>> lens = model.resid_to_logits(cache[hooks.resid_post(1)])  # doctest: +SKIP
        """
        logits = self.bridge.unembed(self.bridge.ln_final(resid))
        return self.bridge.adapter.apply_output_logits_transform(logits)

    # ------------------------------------------------------------------ internals
    def _hf_attention(self, layer: int) -> Any:
        return self.bridge.blocks[layer].attn.original_component

    def _as_batch(self, batch: Batch | Mapping[str, Any]) -> Batch:
        if isinstance(batch, Batch):
            self._check(batch)
            return batch
        if isinstance(batch, Mapping):
            return self.batch_from_inputs(batch)
        raise VLMInputError(
            f"expected a vlm_lens Batch (from model.prepare) or a dict of model inputs, got "
            f"{type(batch).__name__}; for token ids alone use model.batch_from_inputs("
            "{'input_ids': ids})"
        )

    @functools.cached_property
    def _origin(self) -> str | None:
        """`processor_fingerprint` of the processor: the origin of this model's batches."""
        return processor_fingerprint(self.processor)

    def _check(self, batch: Batch) -> None:
        check_origin(batch, self._origin)
        inputs = batch.inputs
        ids = inputs["input_ids"]
        if tuple(batch.layout.shape) != tuple(ids.shape):
            raise VLMInputError(
                f"the batch layout has shape {batch.layout.shape} but input_ids have "
                f"{tuple(ids.shape)}; rebuild the batch with model.prepare or batch_from_inputs"
            )
        for key, value in inputs.items():
            if isinstance(value, Tensor) and value.device != self.device:
                raise VLMInputError(
                    f"input {key!r} is on {value.device} but the model is on {self.device}; "
                    "move the batch with batch.to(model.device)"
                )
        if list(batch.images_per_sequence) != batch.layout.n_images:
            raise VLMInputError(
                f"images per prompt {list(batch.images_per_sequence)} do not match the image "
                f"spans found in input_ids {batch.layout.n_images}; give each prompt one "
                f"{self.image_placeholder!r} per image"
            )
        self.adapter.check_token_ids(inputs, batch.layout)
        self.adapter.check_inputs(inputs, batch.layout)
        expected = self.adapter.attention_structure(batch.layout, inputs)
        given = batch.attention
        if (given is None and not expected.is_causal) or (
            given is not None and not given.same_as(expected)
        ):
            raise VLMInputError(
                f"the batch's attention structure ({given or 'causal'}) is not the one this "
                f"{self.family} model uses for its positions ({expected}); build the batch with "
                "model.prepare or model.batch_from_inputs"
            )

    def _call_args(self, batch: Batch, extra: Mapping[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        inputs = dict(batch.inputs)
        input_ids = inputs.pop("input_ids")
        for key in self.adapter.image_input_keys:
            if key in inputs and key in extra:
                raise VLMInputError(f"{key!r} is in the batch already; do not pass it again")
        kwargs = {**inputs, **extra}
        if "position_ids" not in kwargs and kwargs.get("past_key_values") is None:
            # The positions HF's forward would use (the adapter's; 0..n-1 whatever the padding
            # for the four families): passing them keeps the bridge from deriving other ones
            # from the mask, so logits equal HF's.
            kwargs["position_ids"] = self.adapter.position_ids(batch.inputs)
        return input_ids, kwargs

    @contextmanager
    def _image_groups(self, batch: Batch) -> Iterator[None]:
        """Around every forward pass: the images' grouping, and offload errors explained."""
        set_images_per_sequence(self._feature_owner, self.adapter.feature_groups(batch.layout))
        try:
            with explain_offload_errors(self._placement):
                yield
        finally:
            set_images_per_sequence(self._feature_owner, None)


def _model_class(config: Any) -> tuple[type[nn.Module], type[VLMAdapter]]:
    import transformers

    from vlm_lens.adapters import adapter_class_for_config, supported_architectures

    for name in getattr(config, "architectures", None) or []:
        if name in supported_architectures():  # an unknown vision tower is refused here
            return getattr(transformers, name), adapter_class_for_config(name, config)
    raise UnsupportedModelError(
        f"the checkpoint's architectures {getattr(config, 'architectures', None)} (model_type "
        f"{getattr(config, 'model_type', None)!r}) are not supported. Supported: "
        f"{', '.join(supported_architectures())}. To add a family, subclass "
        "vlm_lens.adapters.VLMAdapter and register it (CONTRIBUTING.md)."
    )


def _group_images(images: Any, n_prompts: int) -> list[list[ImageLike]]:
    if images is None:
        return [[] for _ in range(n_prompts)]
    if not isinstance(images, (list, tuple)):
        images = [images]  # one image; _to_pil names the type if it is not an image
    images = list(images)
    if images and all(isinstance(g, (list, tuple)) for g in images):
        if len(images) != n_prompts:
            raise VLMInputError(
                f"{len(images)} image lists were given for {n_prompts} prompts; give one list "
                "of images per prompt"
            )
        return [list(g) for g in images]
    if n_prompts == 1:
        return [images]
    if len(images) != n_prompts:
        raise VLMInputError(
            f"{len(images)} images were given for {n_prompts} prompts; give one image per "
            "prompt, or a list of image lists (one list per prompt) for several images each"
        )
    return [[img] for img in images]


def _placeholder_message(index: int, prompt: str, found: int, n_images: int, token: str) -> str:
    shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    if found == 0:
        return (
            f"prompt {index} ({shown!r}) has no image placeholder {token!r} but {n_images} "
            f"image(s) were given; write {token!r} where each image goes, e.g. "
            f"{token + ' ' + shown!r}"
        )
    return (
        f"prompt {index} ({shown!r}) has {found} image placeholder(s) {token!r} but "
        f"{n_images} image(s) were given for it; use one {token!r} per image"
    )


def _to_pil(image: ImageLike) -> Image.Image:
    return to_rgb(image)

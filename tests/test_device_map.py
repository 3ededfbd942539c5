"""Sharded models: ``from_pretrained(device_map=...)`` through accelerate's big-model loading.

On this CPU-only suite the maps mix ``"cpu"`` and ``"disk"`` (weights offloaded to an
``offload_folder``, streamed in per module) and ``"auto"`` with a small ``max_memory``. The
references are independent: the plain Hugging Face model loaded with the same map (logits), and
the same checkpoint loaded whole, without a map (activations, every intervention, prefix reuse,
stacked passes), all compared with ``torch.equal``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from vlm_lens import HookedVLM, VLMLensError
from vlm_lens import hooks as hook_names
from vlm_lens.engine.placement import Placement, align_layer_inputs
from vlm_lens.engine.row_stack import stack_hooks, tile_batch
from vlm_lens.engine.suffix_stack import run_suffixes
from vlm_lens.interventions import (
    ablate_image_tokens,
    gate_knockout,
    image_to_text_knockout,
    patch,
    record,
    residual_site,
    steer,
)
from vlm_lens.testing import build_tiny, sample_image, save_tiny

FAMILIES = ("chameleon", "qwen2_vl")  # LLaVA: the tests below

_DISK = ("embed", "lm_head", "visual", "vision")  # Chameleon's VQ model: see README


def offload_map(model: nn.Module) -> dict[str, str]:
    """A map over the decoder's parts and their siblings: the input embedding, the image
    path and the unembedding on ``"disk"``, the decoder layers alternating ``"cpu"`` and
    ``"disk"``, the rest on ``"cpu"``."""
    decoder = model.get_decoder()  # type: ignore[operator]
    path = next(name for name, m in model.named_modules() if m is decoder)
    out: dict[str, str] = {}
    prefix = ""
    for part in [*path.split("."), None]:
        owner = model.get_submodule(prefix.rstrip(".")) if prefix else model
        for child, module in owner.named_children():
            if part is not None and child == part:
                continue
            name = prefix + child
            if part is None and child == "layers":
                for i in range(len(module)):  # type: ignore[arg-type]
                    out[f"{name}.{i}"] = "cpu" if i % 2 == 0 else "disk"
            else:
                out[name] = "disk" if any(k in child for k in _DISK) else "cpu"
        if part is not None:
            prefix += part + "."
    return out


@dataclass
class Sharded:
    family: str
    tiny: Any
    folder: Path
    device_map: dict[str, str]
    sharded: HookedVLM
    whole: HookedVLM

    def batch(self, model: HookedVLM, seed: int = 0, n: int = 1) -> Any:
        image = sample_image(seed=seed, size=self.tiny.image_size)
        return model.prepare(images=[image] * n, text=[self.tiny.prompt] * n)


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Sharded:
    family = request.param
    tiny = build_tiny(family)
    root = tmp_path_factory.mktemp(family)
    folder = save_tiny(tiny, root / "model")
    device_map = offload_map(tiny.model)
    sharded = HookedVLM.from_pretrained(
        folder, device_map=device_map, offload_folder=root / "offload"
    )
    whole = HookedVLM.from_pretrained(folder)
    return Sharded(family, tiny, folder, device_map, sharded, whole)


def test_map_is_dispatched_with_disk(loaded: Sharded) -> None:
    model = loaded.sharded
    assert model.hf_device_map == loaded.device_map
    assert "disk" in set(loaded.device_map.values())
    # offloaded weights read "meta"; inputs still go where the embedding runs
    assert any(p.device.type == "meta" for p in model.hf_model.parameters())
    assert model.device == torch.device("cpu")
    assert all(model.layer_device(i) == torch.device("cpu") for i in range(model.cfg.n_layers))
    assert loaded.whole.hf_device_map is None


def test_logits_equal_hf_with_the_same_map(loaded: Sharded, tmp_path: Path) -> None:
    hf = (
        type(loaded.tiny.model)
        .from_pretrained(  # type: ignore[attr-defined]
            loaded.folder, device_map=loaded.device_map, offload_folder=tmp_path
        )
        .eval()
    )
    batch = loaded.batch(loaded.sharded, n=2)
    with torch.no_grad():
        ours = loaded.sharded(batch)
        theirs = hf(**batch.inputs).logits
        whole = loaded.whole(loaded.batch(loaded.whole, n=2))
    assert ours.device == batch.input_ids.device
    assert torch.equal(ours, theirs)
    assert torch.equal(ours, whole)


def test_cache_and_hook_devices(loaded: Sharded) -> None:
    model, whole = loaded.sharded, loaded.whole
    names = hook_names.lm_filter("resid_pre", "resid_post", "pattern")
    seen: dict[int, torch.device] = {}

    def where(tensor: torch.Tensor, hook: Any) -> None:
        seen[int(hook.name.split(".")[1])] = tensor.device

    fwd = [(hook_names.resid_pre(i), where) for i in range(model.cfg.n_layers)]
    with torch.no_grad(), model.hooks(fwd_hooks=fwd):
        logits, cache = model.run_with_cache(loaded.batch(model), names_filter=names)
    ref_logits, ref = whole.run_with_cache(loaded.batch(whole), names_filter=names)
    assert seen == {i: model.layer_device(i) for i in range(model.cfg.n_layers)}
    assert torch.equal(logits, ref_logits)
    assert sorted(cache.keys()) == sorted(ref.keys()) and len(ref.keys()) > 0
    for key, value in ref.items():
        assert torch.equal(cache[key], value), key
    resid = cache[hook_names.resid_post(model.cfg.n_layers - 1)]
    assert torch.equal(model.resid_to_logits(resid), logits)


def _intervention_results(model: HookedVLM, loaded: Sharded) -> dict[str, torch.Tensor]:
    target, source = loaded.batch(model, seed=0), loaded.batch(model, seed=1)
    layers = model.cfg.n_layers
    vector = torch.linspace(-1, 1, model.cfg.d_model)
    recorded = record(model, source, sites=residual_site(1), positions="gate")
    conditions = {
        "gate_knockout": gate_knockout(target),
        "gate_zero": gate_knockout(target, mode="zero"),
        "image_to_text": image_to_text_knockout(target),
        "steer": steer(target, vector, positions="gate", layers=layers - 1),
        "patch": patch(recorded, target),
        "ablate_zero": ablate_image_tokens(target),
        "ablate_mean": ablate_image_tokens(target, value="mean"),
    }
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, hooks in conditions.items():
            out[name] = model.run_with_hooks(target, fwd_hooks=hooks)
        stackable = [conditions["gate_knockout"], conditions["steer"], conditions["patch"]]
        tiled = model.run_with_hooks(
            tile_batch(target, len(stackable)), fwd_hooks=stack_hooks(stackable, len(target))
        )
        out["row_stack"] = tiled
        late = gate_knockout(target, layers=[layers - 1])
        upto = late.earliest
        assert upto is not None
        prefix = model.prefix_cache(target, upto=upto)
        out["suffix"] = model.run_suffix(prefix, fwd_hooks=late)
        runs = run_suffixes(model, prefix, [late, late], per_pass=2)
        out["suffix_stack"] = torch.stack(list(runs.logits))
        if model.can_generate_from_prefix(target):
            out["generate_prefix"] = model.generate(
                target, prefix=prefix, fwd_hooks=late, max_new_tokens=3
            )
        out["generate"] = model.generate(target, fwd_hooks=conditions["steer"], max_new_tokens=3)
    return out


def test_every_intervention_matches_the_whole_model(loaded: Sharded) -> None:
    ours = _intervention_results(loaded.sharded, loaded)
    theirs = _intervention_results(loaded.whole, loaded)
    assert ours.keys() == theirs.keys()
    clean = loaded.whole(loaded.batch(loaded.whole))
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert not torch.equal(ours["steer"], clean)  # the interventions do something


def test_auto_with_max_memory_spills_to_disk(tmp_path: Path) -> None:
    tiny = build_tiny("llava")
    folder = save_tiny(tiny, tmp_path / "model")
    size = sum(p.numel() * p.element_size() for p in tiny.model.parameters())
    kwargs: dict[str, Any] = {"device_map": "auto", "max_memory": {"cpu": size // 3}}
    model = HookedVLM.from_pretrained(folder, offload_folder=tmp_path / "a", **kwargs)
    hf = type(tiny.model).from_pretrained(folder, offload_folder=tmp_path / "b", **kwargs)
    device_map = model.hf_device_map
    assert device_map is not None and {"cpu", "disk"} <= set(device_map.values())
    assert device_map == hf.hf_device_map
    batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    with torch.no_grad():
        assert torch.equal(model(batch), hf.eval()(**batch.inputs).logits)


@pytest.mark.parametrize("copy_model", [True, False])
def test_from_hf_of_a_dispatched_model(tmp_path: Path, copy_model: bool) -> None:
    tiny = build_tiny("llava")
    folder = save_tiny(tiny, tmp_path / "model")
    device_map = offload_map(tiny.model)
    hf = type(tiny.model).from_pretrained(  # type: ignore[attr-defined]
        folder, device_map=device_map, offload_folder=tmp_path / "offload"
    )
    ref = type(tiny.model).from_pretrained(  # type: ignore[attr-defined]
        folder, device_map=device_map, offload_folder=tmp_path / "ref"
    )
    model = HookedVLM.from_hf(hf, tiny.processor, copy_model=copy_model)
    assert model.hf_device_map == device_map and model.device == torch.device("cpu")
    batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    with torch.no_grad():
        assert torch.equal(model(batch), ref.eval()(**batch.inputs).logits)


def test_unsupported_combinations_are_refused(tmp_path: Path) -> None:
    tiny = build_tiny("llava")
    folder = save_tiny(tiny, tmp_path / "model")
    with pytest.raises(ValueError, match="both given"):
        HookedVLM.from_pretrained(folder, device="cpu", device_map="auto")
    meta = {**offload_map(tiny.model), "lm_head": "meta"}
    with pytest.raises(ValueError, match="'meta', which holds no weights"):
        HookedVLM.from_pretrained(folder, device_map=meta)
    with pytest.raises(ValueError, match="only with device_map"):
        HookedVLM.from_pretrained(folder, max_memory={"cpu": "1GiB"})
    with pytest.raises(ValueError, match="only with device_map"):
        HookedVLM.from_pretrained(folder, offload_folder=tmp_path / "x")
    hf = type(tiny.model).from_pretrained(folder)  # type: ignore[attr-defined]
    hf.hf_device_map = meta  # as a model dispatched elsewhere with meta modules reports
    with pytest.raises(ValueError, match="'meta', which holds no weights"):
        HookedVLM.from_hf(hf, copy_model=False)
    with pytest.raises(ValueError, match="out of range"):
        HookedVLM.from_hf(tiny.model).layer_device(99)


def test_offloaded_module_used_outside_forward_is_explained(tmp_path: Path) -> None:
    """Chameleon's VQ tokenizer runs through ``encode``, not ``forward``, so accelerate never
    loads its offloaded weights: the plain HF model fails with a raw meta-tensor error, and
    vlm_lens names the offloaded modules and the fix."""
    tiny = build_tiny("chameleon")
    folder = save_tiny(tiny, tmp_path / "model")
    device_map = {**offload_map(tiny.model), "model.vqmodel": "disk"}
    hf = type(tiny.model).from_pretrained(  # type: ignore[attr-defined]
        folder, device_map=device_map, offload_folder=tmp_path / "ref"
    )
    model = HookedVLM.from_pretrained(
        folder, device_map=device_map, offload_folder=tmp_path / "offload"
    )
    batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    with torch.no_grad(), pytest.raises(RuntimeError, match="meta"):
        hf.eval()(**batch.inputs)
    with torch.no_grad(), pytest.raises(VLMLensError, match=r"outside its own forward.*vqmodel"):
        model(batch)


def test_cache_device_is_honoured_when_sharded(loaded: Sharded) -> None:
    """``run_with_cache(device=...)`` moves every activation as it is recorded, also on a
    model spread over several devices (TransformerLens' warning that it is ignored there is
    wrong and silenced); "meta" is the one other device a CPU-only run can name."""
    model = loaded.sharded
    spread = model.cfg.n_devices
    model.cfg.n_devices = 2  # as on two GPUs
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error")
            _, cache = model.run_with_cache(
                loaded.batch(model), names_filter=hook_names.lm_filter("resid_post"), device="meta"
            )
    finally:
        model.cfg.n_devices = spread
    assert len(cache.keys()) == model.cfg.n_layers
    assert all(value.device.type == "meta" for value in cache.values())


_GPUS = torch.cuda.device_count()


def gpu_map(model: nn.Module, gpus: int) -> dict[str, Any]:
    """Two or more GPUs: decoder layer ``i`` on GPU ``i % gpus``, the rest on GPU 0. One GPU:
    the layers alternate GPU 0 and ``"cpu"`` offload, the unembedding on ``"disk"``."""
    out: dict[str, Any] = {}
    for name in offload_map(model):
        layer = name.rsplit(".", 1)[-1]
        if layer.isdigit() and ".layers." in f".{name}":
            out[name] = int(layer) % gpus if gpus > 1 else (0 if int(layer) % 2 == 0 else "cpu")
        else:
            out[name] = "disk" if gpus == 1 and "lm_head" in name else 0
    return out


@pytest.mark.skipif(_GPUS < 1, reason="needs a CUDA GPU (the device tool lends one at times)")
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_gpu_maps(tmp_path: Path, family: str) -> None:
    """On GPUs: logits equal HF with the same map, on the input device; each layer's hooks see
    its layer's device; every intervention equals the model on one GPU."""
    tiny = build_tiny(family)
    folder = save_tiny(tiny, tmp_path / "model")
    device_map = gpu_map(tiny.model, min(_GPUS, 2))
    kwargs: dict[str, Any] = {"device_map": device_map}
    sharded = HookedVLM.from_pretrained(folder, offload_folder=tmp_path / "a", **kwargs)
    hf = type(tiny.model).from_pretrained(folder, offload_folder=tmp_path / "b", **kwargs)
    whole = HookedVLM.from_pretrained(folder, device="cuda:0")
    loaded = Sharded(family, tiny, folder, device_map, sharded, whole)
    batch = loaded.batch(sharded, n=2)
    seen: dict[int, torch.device] = {}

    def where(tensor: torch.Tensor, hook: Any) -> None:
        seen[int(hook.name.split(".")[1])] = tensor.device

    fwd = [(hook_names.resid_pre(i), where) for i in range(sharded.cfg.n_layers)]
    with torch.no_grad():
        ours = sharded.run_with_hooks(batch, fwd_hooks=fwd)
        theirs = hf.eval()(**batch.inputs).logits
    assert ours.device == sharded.device == torch.device("cuda", 0)
    assert torch.equal(ours, theirs)
    assert seen == {i: sharded.layer_device(i) for i in range(sharded.cfg.n_layers)}
    if _GPUS > 1:
        assert len(sharded.devices) == 2 and sharded.layer_device(1) == torch.device("cuda", 1)
    mine, reference = _intervention_results(sharded, loaded), _intervention_results(whole, loaded)
    for name in mine:
        assert torch.allclose(mine[name].float(), reference[name].float(), atol=1e-5), name


def test_residual_reaches_the_layer_device_before_its_first_hook() -> None:
    """`align_layer_inputs` on a placement whose last layer runs elsewhere ("meta", the one
    other device a CPU run has): the residual entering that layer is moved before
    ``hook_resid_pre`` fires (stopped there, so nothing computes on meta); the layers
    before it stay put, and removing the hooks restores the plain run."""
    tiny = build_tiny("llava")
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    batch = model.prepare(images=sample_image(size=tiny.image_size), text=tiny.prompt)
    layers = [block.original_component for block in model.bridge.blocks]
    last = len(layers) - 1
    cpu, meta = torch.device("cpu"), torch.device("meta")
    by_module = {id(layer): (meta if i == last else cpu) for i, layer in enumerate(layers)}
    placement = Placement(cpu, {"model": "cpu"}, by_module)
    assert align_layer_inputs(model.bridge.blocks, Placement(cpu, None, {}), layers) == []
    seen: dict[int, torch.device] = {}

    def where(tensor: torch.Tensor, hook: Any) -> None:
        seen[int(hook.name.split(".")[1])] = tensor.device

    handles = align_layer_inputs(model.bridge.blocks, placement, layers)
    try:
        with torch.no_grad(), model.hooks([(hook_names.resid_pre(i), where) for i in range(last)]):
            resid = model(batch, stop_at_layer=last)
    finally:
        for handle in handles:
            handle.remove()
    assert len(handles) == len(layers)
    assert resid.device == meta and seen == dict.fromkeys(range(last), cpu)
    with torch.no_grad():
        assert torch.equal(model(batch), HookedVLM.from_hf(tiny.model, tiny.processor)(batch))


def test_a_dispatched_model_is_not_moved(loaded: Sharded) -> None:
    for move in (lambda m: m.to("cpu"), lambda m: m.cpu(), lambda m: m.cuda()):
        with pytest.raises(ValueError, match="device_map"):
            move(loaded.sharded)
    assert loaded.whole.to("cpu") is loaded.whole

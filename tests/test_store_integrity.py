"""The activation store never mixes runs and never loads damage silently (issue 17).

Each test builds the hostile case for real: a model whose weights differ only in the last value
of one parameter, a hook active through ``model.hooks``, another attention implementation,
image files rewritten at the same paths, flipped bytes, a chunk copied over another, a
truncated chunk, a garbled manifest. It checks the error (what it names, the fix it gives) and
that resuming gives arrays ``torch.equal`` to a clean run computed independently in another
folder.
"""

from __future__ import annotations

import json
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xxhash
from _runner_child import RUN_KWARGS, setup
from safetensors.torch import save_file

from vlm_lens import HookedVLM, VLMInputError, hooks
from vlm_lens.data.collect import Probe
from vlm_lens.data.digest import tensor_digest, weights_digests
from vlm_lens.data.examples import Example, make_examples
from vlm_lens.data.hook_state import DECLARED, active_hooks, callable_digest
from vlm_lens.data.runner import run_dataset
from vlm_lens.data.store import MANIFEST, ActivationStore
from vlm_lens.errors import HookFingerprintError, StoreConfigError, StoreDamagedError
from vlm_lens.interventions import ablate_image_tokens, random_image_knockout, steer

N = 7  # chunks of 3, 3, 1 examples
KWARGS = {**RUN_KWARGS, "batch_size": 3}


@pytest.fixture(scope="module")
def llava() -> tuple[HookedVLM, list[Example], list[Probe]]:
    model, examples, probes = setup(N)
    return model, examples, probes


@pytest.fixture(scope="module")
def clean(
    llava: tuple[HookedVLM, list[Example], list[Probe]], tmp_path_factory: pytest.TempPathFactory
) -> ActivationStore:
    """The uninterrupted, undamaged run every repaired store must equal."""
    model, examples, probes = llava
    return run_dataset(model, examples, probes, tmp_path_factory.mktemp("clean"), **KWARGS)


def _assert_equal(store: ActivationStore, clean: ActivationStore) -> None:
    assert store.complete and store.names == clean.names
    for name in clean.names:
        assert torch.equal(store.load(name), clean.load(name)), name
    assert store.example_indices == clean.example_indices and store.labels == clean.labels


def _interrupted(model: HookedVLM, examples: list[Example], probes: list[Probe], out: Path) -> None:
    """A run stopped after its first chunk (an exception where a kill would be)."""

    def stop(chunk: int, store: ActivationStore) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_dataset(model, examples, probes, out, on_chunk_written=stop, **KWARGS)
    assert ActivationStore(out).completed_chunks == [0]


def _resume(model: HookedVLM, examples: list[Example], probes: list[Probe], out: Path) -> list[int]:
    written: list[int] = []
    run_dataset(
        model, examples, probes, out, on_chunk_written=lambda c, s: written.append(c), **KWARGS
    )
    return written


# ---------------------------------------------------------------------- weights
def test_weights_digest_is_every_byte_of_every_tensor(
    llava: tuple[HookedVLM, list[Example], list[Probe]],
) -> None:
    model, _, _ = llava
    digests = weights_digests(model.hf_model)
    named = {**dict(model.hf_model.named_parameters()), **dict(model.hf_model.named_buffers())}
    assert set(digests) == set(named)
    for name, tensor in named.items():  # an independent hash of the same bytes
        t = tensor.detach()
        expected = xxhash.xxh3_128(f"{t.dtype}:{tuple(t.shape)}:".encode())
        expected.update(t.contiguous().view(torch.uint8).numpy().tobytes())
        assert digests[name] == expected.hexdigest(), name


def test_weights_digest_reads_accelerate_offloaded_weights(
    llava: tuple[HookedVLM, list[Example], list[Probe]], tmp_path: Path
) -> None:
    import copy

    from accelerate import disk_offload

    model, _, _ = llava
    module = copy.deepcopy(model.hf_model)
    before = weights_digests(module)
    disk_offload(module, str(tmp_path), execution_device="cpu", offload_buffers=True)
    assert any(p.device.type == "meta" for p in module.parameters())  # really offloaded
    assert weights_digests(module) == before


def test_resuming_with_weights_changed_after_the_first_values_is_refused(
    llava: tuple[HookedVLM, list[Example], list[Probe]], clean: ActivationStore, tmp_path: Path
) -> None:
    model, examples, probes = llava
    _interrupted(model, examples, probes, tmp_path)
    name, param = list(model.hf_model.named_parameters())[-3]
    assert param.numel() > 8
    with torch.no_grad():
        param.view(-1)[-1] += 0.5  # the last value only; the first 8 are untouched
    try:
        with pytest.raises(StoreConfigError, match="overwrite=True") as info:
            run_dataset(model, examples, probes, tmp_path, **KWARGS)
        assert f"model.weights.{name}: stored" in str(info.value)
    finally:
        with torch.no_grad():
            param.view(-1)[-1] -= 0.5
    assert _resume(model, examples, probes, tmp_path) == [1, 2]
    _assert_equal(ActivationStore(tmp_path), clean)


# ---------------------------------------------------------------------- hooks
def _scaler(scale: float, d_model: int) -> Any:
    """A user hook built afresh each call (as in a new process): adds scale * a fixed vector."""
    vector = torch.linspace(-1, 1, d_model)

    def add(tensor: torch.Tensor, hook: Any) -> torch.Tensor:
        return tensor + scale * vector

    return add


def test_hooks_active_through_model_hooks_are_part_of_the_run(
    llava: tuple[HookedVLM, list[Example], list[Probe]], clean: ActivationStore, tmp_path: Path
) -> None:
    model, examples, probes = llava
    d, site = model.cfg.d_model, hooks.resid_post(0)
    _interrupted(model, examples, probes, tmp_path / "clean")
    with model.hooks(fwd_hooks=[(site, _scaler(2.0, d))]):
        assert [h["module"] for h in active_hooks(model)] == ["blocks.0.hook_out"]
        with pytest.raises(StoreConfigError, match=r"model\.hooks: stored \[\], now"):
            run_dataset(model, examples, probes, tmp_path / "clean", **KWARGS)
        _interrupted(model, examples, probes, tmp_path / "hooked")
    assert active_hooks(model) == []
    with pytest.raises(StoreConfigError, match=r"model\.hooks: stored \[\{"):
        run_dataset(model, examples, probes, tmp_path / "hooked", **KWARGS)
    with (
        model.hooks(fwd_hooks=[(site, _scaler(3.0, d))]),  # same code, another scale
        pytest.raises(StoreConfigError, match=r"model\.hooks\[0\]\.digest: stored"),
    ):
        run_dataset(model, examples, probes, tmp_path / "hooked", **KWARGS)
    with model.hooks(fwd_hooks=[(site, _scaler(2.0, d))]):  # rebuilt the same: resumes
        assert _resume(model, examples, probes, tmp_path / "hooked") == [1, 2]
        fresh = run_dataset(model, examples, probes, tmp_path / "fresh-hooked", **KWARGS)
    _assert_equal(ActivationStore(tmp_path / "hooked"), fresh)
    assert not torch.equal(fresh.load("gate"), clean.load("gate"))  # the hook changed numbers
    assert torch.equal(
        fresh.load("gate")[:, 0], clean.load("gate")[:, 0] + 2.0 * torch.linspace(-1, 1, d)
    )
    assert _resume(model, examples, probes, tmp_path / "clean") == [1, 2]
    _assert_equal(ActivationStore(tmp_path / "clean"), clean)


def test_raw_torch_hooks_and_global_hooks_are_seen(
    llava: tuple[HookedVLM, list[Example], list[Probe]],
) -> None:
    model, _, _ = llava
    layer = model.hf_model.get_submodule("model.language_model.layers.1")
    handle = layer.register_forward_hook(lambda module, args, out: None)
    try:
        (found,) = active_hooks(model)
        assert (found["module"], found["kind"]) == ("blocks.1", "forward")  # the bridge's name
    finally:
        handle.remove()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: None)
    try:
        assert [(h["module"], h["kind"]) for h in active_hooks(model)] == [
            ("<global>", "forward_pre")
        ]
    finally:
        handle.remove()
    assert active_hooks(model) == []


def test_vlm_lens_interventions_fingerprint_by_content(
    llava: tuple[HookedVLM, list[Example], list[Probe]],
) -> None:
    model, examples, _ = llava
    batch = model.prepare(images=[examples[0].images], text=["USER: <image>\nHi ASSISTANT:"])
    vector = torch.arange(model.cfg.d_model, dtype=torch.float32)

    def digests(intervention: list[Any]) -> list[str]:
        return [callable_digest(fn, model) for _, fn in intervention]

    same = digests(steer(batch, vector, layers=[0, 1], scale=2.0))
    assert same == digests(steer(batch, vector.clone(), layers=[0, 1], scale=2.0))
    assert same != digests(steer(batch, vector, layers=[0, 1], scale=2.5))
    assert same != digests(steer(batch, vector + 1, layers=[0, 1], scale=2.0))
    draws = digests(random_image_knockout(batch, layers=[0], k=3, seed=1))
    assert draws == digests(random_image_knockout(batch, layers=[0], k=3, seed=1))
    assert draws != digests(random_image_knockout(batch, layers=[0], k=3, seed=2))
    zero = digests(ablate_image_tokens(batch, value="zero"))
    assert zero == digests(ablate_image_tokens(batch, value="zero"))
    assert zero != digests(ablate_image_tokens(batch, value="mean"))


def test_a_hook_that_cannot_be_fingerprinted_is_refused_or_declared(
    llava: tuple[HookedVLM, list[Example], list[Probe]], tmp_path: Path
) -> None:
    model, examples, probes = llava
    lock = threading.Lock()

    def locked(tensor: torch.Tensor, hook: Any) -> None:
        with lock:
            return

    with model.hooks(fwd_hooks=[(hooks.resid_post(0), locked)]):
        with pytest.raises(HookFingerprintError, match=r"locked on blocks\.0\.hook_out.*'lock'"):
            run_dataset(model, examples, probes, tmp_path / "a", **KWARGS)
        assert DECLARED in str(pytest.raises(HookFingerprintError, active_hooks, model).value)
    assert not (tmp_path / "a").exists()  # refused before anything was written
    locked.vlm_lens_fingerprint = "lock-reader v1"  # type: ignore[attr-defined]
    with model.hooks(fwd_hooks=[(hooks.resid_post(0), locked)]):
        run = run_dataset(model, examples, probes, tmp_path / "a", **KWARGS)
    assert run.config["model"]["hooks"][0]["function"].endswith("locked")
    locked.vlm_lens_fingerprint = "lock-reader v2"  # type: ignore[attr-defined]
    with (
        model.hooks(fwd_hooks=[(hooks.resid_post(0), locked)]),
        pytest.raises(StoreConfigError, match=r"model\.hooks\[0\]\.digest"),
    ):
        run_dataset(model, examples, probes, tmp_path / "a", **KWARGS)


# ---------------------------------------------------------------------- attention, probes
def test_attention_implementation_and_probe_callables_are_part_of_the_run(
    llava: tuple[HookedVLM, list[Example], list[Probe]], tmp_path: Path
) -> None:
    model, examples, probes = llava
    run_dataset(model, examples[:3], probes, tmp_path / "a", **KWARGS)
    before = model.attn_implementation
    model.set_attn_implementation("sdpa" if before == "eager" else "eager")
    try:
        with pytest.raises(StoreConfigError, match=r"model\.attention\.: stored"):
            run_dataset(model, examples[:3], probes, tmp_path / "a", **KWARGS)
    finally:
        model.set_attn_implementation(before)

    def nth_text(n: int) -> Any:
        def pick(layout: Any) -> torch.Tensor:
            mask = layout.mask("text")
            out = torch.zeros_like(mask)
            out[torch.arange(mask.shape[0]), mask.int().cumsum(1).eq(n + 1).int().argmax(1)] = True
            return out & mask

        return pick

    run_dataset(model, examples[:3], [Probe("t", positions=nth_text(0))], tmp_path / "b", **KWARGS)
    with pytest.raises(StoreConfigError, match=r"probes\[0\]\.positions_digest: stored"):
        run_dataset(
            model, examples[:3], [Probe("t", positions=nth_text(1))], tmp_path / "b", **KWARGS
        )
    run_dataset(model, examples[:3], [Probe("t", positions=nth_text(0))], tmp_path / "b", **KWARGS)


# ---------------------------------------------------------------------- image contents
def test_resuming_after_image_files_changed_is_refused_naming_the_examples(
    llava: tuple[HookedVLM, list[Example], list[Probe]], tmp_path: Path
) -> None:
    model, examples, probes = llava
    paths = []
    for i, example in enumerate(examples):
        paths.append(tmp_path / f"{i}.png")
        example.images.save(paths[-1])  # type: ignore[union-attr]
    on_disk = make_examples(paths, [e.text for e in examples], ids=[e.id for e in examples])
    out = tmp_path / "store"
    _interrupted(model, on_disk, probes, out)
    original = paths[4].read_bytes()
    pixels = np.asarray(examples[4].images).copy()
    pixels[0, 0] ^= 0xFF  # one pixel, same file name
    from PIL import Image

    Image.fromarray(pixels).save(paths[4])
    with pytest.raises(
        StoreConfigError, match=r"examples: stored .* 1 example\(s\) differ: 4 \(id='ex4'\)"
    ):
        run_dataset(model, on_disk, probes, out, **KWARGS)
    paths[4].write_bytes(original)
    moved = tmp_path / "moved"  # the same bytes in another folder: the same dataset
    shutil.copytree(tmp_path, moved, ignore=shutil.ignore_patterns("store", "moved"))
    relocated = make_examples(
        [moved / p.name for p in paths], [e.text for e in examples], ids=[e.id for e in examples]
    )
    assert _resume(model, relocated, probes, out) == [1, 2]
    fresh = run_dataset(model, on_disk, probes, tmp_path / "fresh", **KWARGS)
    _assert_equal(ActivationStore(out), fresh)


def test_an_unreadable_image_file_is_named_before_anything_runs(
    llava: tuple[HookedVLM, list[Example], list[Probe]], tmp_path: Path
) -> None:
    model, examples, probes = llava
    paths = [tmp_path / "a.png", tmp_path / "missing.png"]
    examples[0].images.save(paths[0])  # type: ignore[union-attr]
    bad = make_examples(paths, "Say?", ids=["a", "b"])
    with pytest.raises(VLMInputError, match=r"example 1 \(id='b'\): cannot read .*missing\.png"):
        run_dataset(model, bad, probes, tmp_path / "s", **KWARGS)
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------- damaged chunks
def _flip(path: Path, n: int, seed: int = 0) -> None:
    """XOR `n` bytes of a safetensors file's data region (after its header)."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    rng = np.random.default_rng(seed)
    for offset in rng.choice(np.arange(header, len(data)), size=n, replace=False):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage_and_repair(
    llava: tuple[HookedVLM, list[Example], list[Probe]],
    clean: ActivationStore,
    out: Path,
    damage: Any,
    chunk: int,
    problem: str,
) -> None:
    model, examples, probes = llava
    shutil.copytree(clean.path, out)
    damage(out)
    store = ActivationStore(out)
    assert store.complete  # the file is there: only reading can tell
    with pytest.raises(StoreDamagedError) as info:
        for name in store.names:
            store.load(name)
    message = str(info.value)
    assert f"chunk_{chunk:06d}.safetensors is damaged" in message and problem in message
    assert "rerun run_dataset with the same arguments" in message
    assert list(store.damaged_chunks()) == [chunk]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _resume(model, examples, probes, out) == [chunk]
    assert any(f"chunk_{chunk:06d}" in str(w.message) for w in caught)
    _assert_equal(ActivationStore(out), clean)
    assert ActivationStore(out).damaged_chunks() == {}


def test_flipped_bytes_are_caught_and_recomputed(
    llava: tuple[HookedVLM, list[Example], list[Probe]], clean: ActivationStore, tmp_path: Path
) -> None:
    def flip(out: Path) -> None:
        _flip(out / "chunk_000001.safetensors", 100)

    _damage_and_repair(llava, clean, tmp_path / "s", flip, 1, "does not match its bytes")


def test_a_chunk_copied_over_another_is_caught_and_recomputed(
    llava: tuple[HookedVLM, list[Example], list[Probe]], clean: ActivationStore, tmp_path: Path
) -> None:
    def copy(out: Path) -> None:
        shutil.copy(out / "chunk_000000.safetensors", out / "chunk_000001.safetensors")

    _damage_and_repair(llava, clean, tmp_path / "s", copy, 1, "it was copied or renamed")


def test_a_chunk_whose_example_index_disagrees_is_caught(
    llava: tuple[HookedVLM, list[Example], list[Probe]], clean: ActivationStore, tmp_path: Path
) -> None:
    """Metadata that says chunk 1 and valid checksums, but chunk 0's example_index: only the
    index check can catch it."""

    def forge(out: Path) -> None:
        (_, first), (_, second) = list(clean.iter_chunks())[:2]
        data = {k: v.clone() for k, v in second.items()}
        data["example_index"] = torch.arange(0, 3)
        meta = {
            "fingerprint": clean.fingerprint,
            "chunk": "1",
            "examples": "3:6",
            "checksums": json.dumps({k: tensor_digest(v) for k, v in data.items()}),
        }
        save_file(data, str(out / "chunk_000001.safetensors"), metadata=meta)

    _damage_and_repair(llava, clean, tmp_path / "s", forge, 1, "holds examples 0..2, not 3..5")


def test_a_truncated_chunk_is_caught_and_recomputed(
    llava: tuple[HookedVLM, list[Example], list[Probe]], clean: ActivationStore, tmp_path: Path
) -> None:
    def truncate(out: Path) -> None:
        path = out / "chunk_000002.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    _damage_and_repair(llava, clean, tmp_path / "s", truncate, 2, "truncated")


def test_a_chunk_of_another_run_is_caught_and_recomputed(
    llava: tuple[HookedVLM, list[Example], list[Probe]], clean: ActivationStore, tmp_path: Path
) -> None:
    model, examples, probes = llava
    other = run_dataset(model, examples, probes, tmp_path / "other", **{**KWARGS, "seed": 99})

    def swap(out: Path) -> None:
        shutil.copy(other.path / "chunk_000000.safetensors", out / "chunk_000000.safetensors")

    _damage_and_repair(llava, clean, tmp_path / "s", swap, 0, "written by another run")


# ---------------------------------------------------------------------- the manifest
def test_a_broken_manifest_is_a_clear_error_and_resume_rebuilds_it(
    llava: tuple[HookedVLM, list[Example], list[Probe]], clean: ActivationStore, tmp_path: Path
) -> None:
    model, examples, probes = llava
    out = tmp_path / "s"
    shutil.copytree(clean.path, out)
    manifest = out / MANIFEST
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])  # cut off mid-write by hand
    with pytest.raises(StoreDamagedError, match=r"manifest\.json is damaged: it is not valid JSON"):
        ActivationStore(out)
    with pytest.raises(StoreDamagedError, match="rerun run_dataset with the same arguments"):
        ActivationStore(out)
    with pytest.warns(UserWarning, match=r"rebuilt it from this run's config \(3 chunk"):
        assert _resume(model, examples, probes, out) == []
    _assert_equal(ActivationStore(out), clean)

    edited = json.loads(manifest.read_text())
    edited["config"]["seed"] = 123  # valid JSON, but no longer the run its chunks carry
    manifest.write_text(json.dumps(edited))
    with pytest.raises(StoreDamagedError, match="its fingerprint is not that of its config"):
        ActivationStore(out)
    manifest.write_text("{}")
    with pytest.raises(StoreDamagedError, match="not a vlm_lens.ActivationStore manifest"):
        ActivationStore(out)
    manifest.unlink()  # no manifest at all: rebuilt the same way
    with pytest.warns(UserWarning, match="no manifest.json"):
        assert _resume(model, examples, probes, out) == []
    _assert_equal(ActivationStore(out), clean)
    # a broken manifest next to another run's chunks is refused, not rebuilt
    manifest.write_text("not json")
    with pytest.raises(StoreConfigError, match="chunk files of another run.*overwrite=True"):
        run_dataset(model, examples, probes, out, **{**KWARGS, "seed": 1})


def test_a_store_of_another_format_version_says_so(clean: ActivationStore, tmp_path: Path) -> None:
    out = tmp_path / "s"
    shutil.copytree(clean.path, out)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["version"] = 1
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreConfigError, match="version-1 .* reads version 2.*overwrite=True"):
        ActivationStore(out)
